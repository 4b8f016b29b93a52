-- Why orders were cancelled.
SELECT cancel_reason, count(*) AS orders FROM orders WHERE status = 'cancelled' GROUP BY cancel_reason ORDER BY cancel_reason
