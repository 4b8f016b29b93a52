-- One order by key, with its timestamps.
SELECT order_id, customer_id, status, amount, placed_at, paid_at, shipped_at, cancel_reason FROM orders WHERE order_id = 'o-000000042'
