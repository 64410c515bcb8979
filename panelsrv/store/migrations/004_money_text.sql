-- 004_money_text: money_text in integer arithmetic. 002's version divided as numeric, whose
-- quotient keeps only ~16 significant digits, so amounts of 1e9 and more (units >= 1e14) could
-- lose their last decimals ('92233720368547.7581' for ...47.75807). Same text as money.format:
-- at least 2 decimals, at most 5, trailing zeros dropped, a '-' for negatives.
CREATE OR REPLACE FUNCTION money_text(p_units bigint) RETURNS text
LANGUAGE sql IMMUTABLE AS $$
    SELECT CASE WHEN p_units < 0 THEN '-' ELSE '' END || whole || '.'
           || CASE WHEN length(frac) < 2 THEN rpad(frac, 2, '0') ELSE frac END
      FROM (SELECT div(abs(p_units::numeric), 100000)::text AS whole,
                   rtrim(lpad(mod(abs(p_units::numeric), 100000)::text, 5, '0'), '0') AS frac) x;
$$;
