-- Option contract snapshots, one row per (underlying, time, type, strike, expiration).
-- Safe to run more than once: IF NOT EXISTS, DROP POLICY IF EXISTS, idempotent GRANT/REVOKE.

CREATE TABLE IF NOT EXISTS public.option_prices (
    id BIGSERIAL PRIMARY KEY,
    ticker VARCHAR(10) NOT NULL,
    timestamp TIMESTAMPTZ NOT NULL,
    option_type VARCHAR(4) NOT NULL CHECK (option_type IN ('CALL', 'PUT')),
    strike_price DECIMAL(10, 2) NOT NULL,
    expiration_date DATE NOT NULL,
    last_price DECIMAL(10, 4),
    bid DECIMAL(10, 4),
    ask DECIMAL(10, 4),
    volume BIGINT,
    open_interest BIGINT,
    implied_volatility DECIMAL(10, 4),
    delta DECIMAL(10, 4),
    gamma DECIMAL(10, 4),
    theta DECIMAL(10, 4),
    vega DECIMAL(10, 4),
    option_symbol VARCHAR(50),
    created_at TIMESTAMPTZ DEFAULT NOW(),
    UNIQUE(ticker, timestamp, option_type, strike_price, expiration_date)
);

-- Time-series reads ("latest snapshots for an underlying") scan these newest first.
CREATE INDEX IF NOT EXISTS idx_option_prices_ticker_timestamp
    ON public.option_prices (ticker, timestamp DESC);

-- Row Level Security: the service role writes; anon and authenticated (dashboards) only read.
-- Supabase creates the roles anon, authenticated and service_role; on a plain Postgres without
-- them (the service's own `postgres` sink) RLS is still enabled but the policies are skipped, and
-- the table owner, which the service connects as, is not subject to RLS.
ALTER TABLE public.option_prices ENABLE ROW LEVEL SECURITY;

DO $rls$
BEGIN
    IF (SELECT count(*) FROM pg_roles WHERE rolname IN ('anon', 'authenticated', 'service_role')) = 3 THEN
        DROP POLICY IF EXISTS "option_prices_read" ON public.option_prices;
        CREATE POLICY "option_prices_read" ON public.option_prices FOR SELECT TO anon, authenticated USING (true);
        DROP POLICY IF EXISTS "option_prices_service_all" ON public.option_prices;
        CREATE POLICY "option_prices_service_all" ON public.option_prices FOR ALL TO service_role USING (true) WITH CHECK (true);
        REVOKE INSERT, UPDATE, DELETE, TRUNCATE, REFERENCES, TRIGGER ON public.option_prices FROM anon, authenticated;
        GRANT SELECT ON public.option_prices TO anon, authenticated;
        GRANT ALL ON public.option_prices TO service_role;
        GRANT USAGE, SELECT ON SEQUENCE public.option_prices_id_seq TO service_role;
    ELSE
        RAISE NOTICE 'Supabase roles anon/authenticated/service_role not found: RLS policies skipped';
    END IF;
END
$rls$;
