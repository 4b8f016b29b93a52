-- Orders per status with their total amount.
SELECT status, count(*) AS orders, round(sum(amount), 2) AS amount FROM orders GROUP BY status ORDER BY status
