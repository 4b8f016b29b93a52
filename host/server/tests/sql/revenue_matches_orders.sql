-- Revenue per customer equals the amounts of that customer's paid and shipped orders.
SELECT count(*) AS customers_checked, sum(CASE WHEN abs(r.revenue - coalesce(o.paid, 0)) < 0.001 THEN 1 ELSE 0 END) AS matching
FROM customer_revenue r
LEFT JOIN (SELECT customer_id, sum(amount) AS paid FROM orders WHERE status IN ('paid', 'shipped') GROUP BY customer_id) o
  ON r.customer_id = o.customer_id
