-- OPT-IN data retention. Not a migration: `supabase db push` does not apply it, and nothing is
-- ever deleted unless you run this file AND call or schedule prune_market_data yourself.
--
--   SELECT * FROM public.prune_market_data(interval '90 days');
--
-- deletes rows whose market `timestamp` is older than now() - keep from equity_data, indicators
-- and option_prices, and returns how many rows each table lost. `keep` must be at least one day,
-- so a typo cannot empty the tables. Only the table owner and service_role may run it.
-- Safe to run this file more than once.

CREATE OR REPLACE FUNCTION public.prune_market_data(keep interval)
RETURNS TABLE (table_name text, deleted_rows bigint)
LANGUAGE plpgsql
SET search_path = public
AS $prune$
DECLARE
    cutoff timestamptz;
BEGIN
    IF keep IS NULL OR keep < interval '1 day' THEN
        RAISE EXCEPTION 'prune_market_data: keep must be at least 1 day, got %', keep
            USING ERRCODE = '22023', HINT = 'e.g. SELECT * FROM prune_market_data(interval ''90 days'')';
    END IF;
    cutoff := now() - keep;
    DELETE FROM public.equity_data WHERE timestamp < cutoff;
    GET DIAGNOSTICS deleted_rows = ROW_COUNT;
    table_name := 'equity_data';
    RETURN NEXT;
    DELETE FROM public.indicators WHERE timestamp < cutoff;
    GET DIAGNOSTICS deleted_rows = ROW_COUNT;
    table_name := 'indicators';
    RETURN NEXT;
    DELETE FROM public.option_prices WHERE timestamp < cutoff;
    GET DIAGNOSTICS deleted_rows = ROW_COUNT;
    table_name := 'option_prices';
    RETURN NEXT;
END
$prune$;

-- Supabase grants EXECUTE on new functions to anon and authenticated: take it back.
REVOKE ALL ON FUNCTION public.prune_market_data(interval) FROM PUBLIC;
DO $grants$
BEGIN
    IF (SELECT count(*) FROM pg_roles WHERE rolname IN ('anon', 'authenticated', 'service_role')) = 3 THEN
        REVOKE ALL ON FUNCTION public.prune_market_data(interval) FROM anon, authenticated;
        GRANT EXECUTE ON FUNCTION public.prune_market_data(interval) TO service_role;
    END IF;
END
$grants$;

-- To run it every night at 02:00 UTC with pg_cron (Supabase: Dashboard → Integrations → Cron, or):
--
-- CREATE EXTENSION IF NOT EXISTS pg_cron WITH SCHEMA pg_catalog;
-- SELECT cron.schedule(
--   'prune-market-data',
--   '0 2 * * *',
--   $$SELECT public.prune_market_data(interval '90 days')$$
-- );
--
-- and to stop it: SELECT cron.unschedule('prune-market-data');
