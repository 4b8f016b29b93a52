"""Parse an OpenMetrics exposition (standard input) with the reference Python client's parser
(prometheus_client), which refuses anything the format does not allow; print it as JSON:
{"families": {name: type}, "samples": [[name, labels, value], ...]}."""

import json
import sys

from prometheus_client.openmetrics.parser import text_string_to_metric_families

families = {}
samples = []
for family in text_string_to_metric_families(sys.stdin.read()):
    families[family.name] = family.type
    for sample in family.samples:
        samples.append([sample.name, sample.labels, sample.value])
json.dump({"families": families, "samples": samples}, sys.stdout)
