-- The daily proof: per ticker and session day, how the recorded equity_data volume compares, minute
-- by minute, with Schwab's 1-minute price history (`streaming-service verify`, and after each close).
-- Safe to run more than once: IF NOT EXISTS, DROP POLICY IF EXISTS, idempotent GRANT/REVOKE.
-- The streaming service writes with INSERT ... ON CONFLICT (ticker, day) DO UPDATE: checking a day
-- again replaces its row.
-- Without this table the service still records equity_data, indicators, option_prices and
-- stream_gaps; it warns at start and drops the check rows (`verify` still prints them).

CREATE TABLE IF NOT EXISTS public.volume_checks (
    id BIGSERIAL PRIMARY KEY,
    ticker VARCHAR(10) NOT NULL,
    -- The session's exchange (New York) date.
    day DATE NOT NULL,
    -- Minutes of the regular session compared (390 on a full day, 210 on a half day) and how many
    -- of them hold exactly the candle's volume (a minute without trades and without rows matches).
    -- With ROW_RESOLUTION above 60 s (or not a divisor of 60) minutes are compared in groups that
    -- hold whole rows and whole minutes, and a group's minutes match or differ together.
    minutes_checked INTEGER NOT NULL CHECK (minutes_checked >= 0),
    minutes_matching INTEGER NOT NULL,
    -- Shares in equity_data for the session (missing minutes filled included) and in the candles.
    shares_recorded BIGINT NOT NULL,
    shares_candles BIGINT NOT NULL,
    -- The start of the minute (or group) furthest from its candle and recorded minus candle shares
    -- there; both NULL when every minute matches.
    worst_minute TIMESTAMPTZ,
    worst_minute_diff BIGINT,
    -- Minutes without any recorded row but with a candle, filled from the candle by this check.
    minutes_filled INTEGER NOT NULL DEFAULT 0 CHECK (minutes_filled >= 0),
    checked_at TIMESTAMPTZ NOT NULL,
    created_at TIMESTAMPTZ DEFAULT NOW(),
    UNIQUE(ticker, day),
    CHECK (minutes_matching BETWEEN 0 AND minutes_checked),
    CHECK ((worst_minute IS NULL) = (worst_minute_diff IS NULL))
);

-- "Latest checks for a ticker" reads newest first.
CREATE INDEX IF NOT EXISTS idx_volume_checks_ticker_day
    ON public.volume_checks (ticker, day DESC);

-- Row Level Security: the service role writes; anon and authenticated (dashboards) only read.
-- Supabase creates the roles anon, authenticated and service_role; on a plain Postgres without
-- them (the service's own `postgres` sink) RLS is still enabled but the policies are skipped, and
-- the table owner, which the service connects as, is not subject to RLS.
ALTER TABLE public.volume_checks ENABLE ROW LEVEL SECURITY;

DO $rls$
BEGIN
    IF (SELECT count(*) FROM pg_roles WHERE rolname IN ('anon', 'authenticated', 'service_role')) = 3 THEN
        DROP POLICY IF EXISTS "volume_checks_read" ON public.volume_checks;
        CREATE POLICY "volume_checks_read" ON public.volume_checks FOR SELECT TO anon, authenticated USING (true);
        DROP POLICY IF EXISTS "volume_checks_service_all" ON public.volume_checks;
        CREATE POLICY "volume_checks_service_all" ON public.volume_checks FOR ALL TO service_role USING (true) WITH CHECK (true);
        REVOKE INSERT, UPDATE, DELETE, TRUNCATE, REFERENCES, TRIGGER ON public.volume_checks FROM anon, authenticated;
        GRANT SELECT ON public.volume_checks TO anon, authenticated;
        GRANT ALL ON public.volume_checks TO service_role;
        GRANT USAGE, SELECT ON SEQUENCE public.volume_checks_id_seq TO service_role;
    ELSE
        RAISE NOTICE 'Supabase roles anon/authenticated/service_role not found: RLS policies skipped';
    END IF;
END
$rls$;
