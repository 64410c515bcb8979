-- 007_currencies: what currency each price is in. A panel's own services (panel_id set) are
-- priced in that panel's currency, as before. A shared service (panel_id NULL) is offered to
-- panels of any currency, so it now says which one its rate is in: imported ones take their
-- provider's currency (providers.currency). A panel lists and sells a shared service priced in
-- another currency only at an exchange rate its operator set (panel_exchange_rates: 1 unit of
-- `currency` = `rate` units of the panel's currency); without one the service is not offered
-- there, rather than sold at a number meant in another currency.
--
-- Existing rows: when every panel has the same currency, shared services and providers are
-- taken to be priced in it (nothing changes for a single-currency installation); otherwise
-- in USD, the panel default.

ALTER TABLE providers
    ADD COLUMN currency text NOT NULL DEFAULT 'USD' CHECK (currency ~ '^[A-Z]{3}$');
ALTER TABLE services ADD COLUMN currency text CHECK (currency ~ '^[A-Z]{3}$');

UPDATE providers SET currency = x.currency
  FROM (SELECT CASE WHEN count(DISTINCT currency) = 1 THEN min(currency) ELSE 'USD' END
          FROM panels) AS x(currency);
UPDATE services SET currency = x.currency
  FROM (SELECT CASE WHEN count(DISTINCT currency) = 1 THEN min(currency) ELSE 'USD' END
          FROM panels) AS x(currency)
 WHERE services.panel_id IS NULL;

ALTER TABLE services
    ADD CONSTRAINT services_currency CHECK ((panel_id IS NULL) = (currency IS NOT NULL));

CREATE TABLE panel_exchange_rates (
    panel_id  bigint NOT NULL REFERENCES panels,
    currency  text NOT NULL CHECK (currency ~ '^[A-Z]{3}$'),
    rate      numeric NOT NULL CHECK (rate > 0 AND rate < 1e9),
    PRIMARY KEY (panel_id, currency)
);
CREATE TRIGGER panel_exchange_rates_changed AFTER INSERT OR UPDATE OR DELETE
    ON panel_exchange_rates FOR EACH STATEMENT EXECUTE FUNCTION notify_catalog();
