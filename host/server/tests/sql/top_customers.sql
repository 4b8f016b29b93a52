-- The five customers with the most paid revenue, through the qualified name.
SELECT customer_id, round(revenue, 2) AS revenue, orders_paid, orders_cancelled
FROM orders.customer_revenue ORDER BY revenue DESC, customer_id LIMIT 5
