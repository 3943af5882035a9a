-- Equity prices and the indicators computed from them, one row per (ticker, timestamp).
-- Safe to run more than once: IF NOT EXISTS, DROP POLICY IF EXISTS, idempotent GRANT/REVOKE.
-- The streaming service writes with INSERT ... ON CONFLICT (ticker, timestamp) DO UPDATE,
-- so the UNIQUE constraints below are what make replaying a batch harmless.

CREATE TABLE IF NOT EXISTS public.equity_data (
    id BIGSERIAL PRIMARY KEY,
    ticker VARCHAR(10) NOT NULL,
    timestamp TIMESTAMPTZ NOT NULL,
    price DECIMAL(10, 2) NOT NULL,
    volume BIGINT NOT NULL,
    created_at TIMESTAMPTZ DEFAULT NOW(),
    UNIQUE(ticker, timestamp)
);

CREATE TABLE IF NOT EXISTS public.indicators (
    id BIGSERIAL PRIMARY KEY,
    ticker VARCHAR(10) NOT NULL,
    timestamp TIMESTAMPTZ NOT NULL,
    sma9 DECIMAL(10, 2),
    vwap DECIMAL(10, 2),
    created_at TIMESTAMPTZ DEFAULT NOW(),
    UNIQUE(ticker, timestamp)
);

-- Time-series reads ("latest rows for a ticker") scan these newest first.
CREATE INDEX IF NOT EXISTS idx_equity_data_ticker_timestamp
    ON public.equity_data (ticker, timestamp DESC);

CREATE INDEX IF NOT EXISTS idx_indicators_ticker_timestamp
    ON public.indicators (ticker, timestamp DESC);

-- Row Level Security: the service role writes; anon and authenticated (dashboards) only read.
-- Supabase creates the roles anon, authenticated and service_role; on a plain Postgres without
-- them (the service's own `postgres` sink) RLS is still enabled but the policies are skipped, and
-- the table owner, which the service connects as, is not subject to RLS.
ALTER TABLE public.equity_data ENABLE ROW LEVEL SECURITY;
ALTER TABLE public.indicators ENABLE ROW LEVEL SECURITY;

DO $rls$
BEGIN
    IF (SELECT count(*) FROM pg_roles WHERE rolname IN ('anon', 'authenticated', 'service_role')) = 3 THEN
        DROP POLICY IF EXISTS "equity_data_read" ON public.equity_data;
        CREATE POLICY "equity_data_read" ON public.equity_data FOR SELECT TO anon, authenticated USING (true);
        DROP POLICY IF EXISTS "equity_data_service_all" ON public.equity_data;
        CREATE POLICY "equity_data_service_all" ON public.equity_data FOR ALL TO service_role USING (true) WITH CHECK (true);
        REVOKE INSERT, UPDATE, DELETE, TRUNCATE, REFERENCES, TRIGGER ON public.equity_data FROM anon, authenticated;
        GRANT SELECT ON public.equity_data TO anon, authenticated;
        GRANT ALL ON public.equity_data TO service_role;
        GRANT USAGE, SELECT ON SEQUENCE public.equity_data_id_seq TO service_role;
        DROP POLICY IF EXISTS "indicators_read" ON public.indicators;
        CREATE POLICY "indicators_read" ON public.indicators FOR SELECT TO anon, authenticated USING (true);
        DROP POLICY IF EXISTS "indicators_service_all" ON public.indicators;
        CREATE POLICY "indicators_service_all" ON public.indicators FOR ALL TO service_role USING (true) WITH CHECK (true);
        REVOKE INSERT, UPDATE, DELETE, TRUNCATE, REFERENCES, TRIGGER ON public.indicators FROM anon, authenticated;
        GRANT SELECT ON public.indicators TO anon, authenticated;
        GRANT ALL ON public.indicators TO service_role;
        GRANT USAGE, SELECT ON SEQUENCE public.indicators_id_seq TO service_role;
    ELSE
        RAISE NOTICE 'Supabase roles anon/authenticated/service_role not found: RLS policies skipped';
    END IF;
END
$rls$;
