-- Stretches of market hours a ticker was not streamed, one row per (ticker, start of the gap).
-- Safe to run more than once: IF NOT EXISTS, DROP POLICY IF EXISTS, idempotent GRANT/REVOKE.
-- The streaming service writes with INSERT ... ON CONFLICT (ticker, started_at) DO UPDATE, so a
-- gap recorded again (a replayed batch, a longer end) updates its row instead of adding one.
-- Without this table the service still records equity_data, indicators and option_prices; it
-- warns at start and drops the gap rows.

CREATE TABLE IF NOT EXISTS public.stream_gaps (
    id BIGSERIAL PRIMARY KEY,
    ticker VARCHAR(10) NOT NULL,
    started_at TIMESTAMPTZ NOT NULL,
    ended_at TIMESTAMPTZ NOT NULL,
    -- restart: the service was not running; disconnect: the stream dropped; stale: it went quiet;
    -- sink: the database refused or lost rows of the gap.
    cause VARCHAR(10) NOT NULL CHECK (cause IN ('restart', 'disconnect', 'stale', 'sink')),
    -- Minute rows written to equity_data from Schwab's price history for the gap.
    equity_backfilled_rows INTEGER NOT NULL DEFAULT 0,
    -- Shares traded in the gap that no equity_data row holds (negative: the candles held more);
    -- NULL when unknown.
    volume_missing BIGINT,
    -- Option quotes of the gap are lost (there is no option history to fill them from).
    options_missed BOOLEAN NOT NULL DEFAULT false,
    created_at TIMESTAMPTZ DEFAULT NOW(),
    UNIQUE(ticker, started_at),
    CHECK (ended_at >= started_at)
);

-- Time-series reads ("latest gaps for a ticker") scan these newest first.
CREATE INDEX IF NOT EXISTS idx_stream_gaps_ticker_started_at
    ON public.stream_gaps (ticker, started_at DESC);

-- Row Level Security: the service role writes; anon and authenticated (dashboards) only read.
-- Supabase creates the roles anon, authenticated and service_role; on a plain Postgres without
-- them (the service's own `postgres` sink) RLS is still enabled but the policies are skipped, and
-- the table owner, which the service connects as, is not subject to RLS.
ALTER TABLE public.stream_gaps ENABLE ROW LEVEL SECURITY;

DO $rls$
BEGIN
    IF (SELECT count(*) FROM pg_roles WHERE rolname IN ('anon', 'authenticated', 'service_role')) = 3 THEN
        DROP POLICY IF EXISTS "stream_gaps_read" ON public.stream_gaps;
        CREATE POLICY "stream_gaps_read" ON public.stream_gaps FOR SELECT TO anon, authenticated USING (true);
        DROP POLICY IF EXISTS "stream_gaps_service_all" ON public.stream_gaps;
        CREATE POLICY "stream_gaps_service_all" ON public.stream_gaps FOR ALL TO service_role USING (true) WITH CHECK (true);
        REVOKE INSERT, UPDATE, DELETE, TRUNCATE, REFERENCES, TRIGGER ON public.stream_gaps FROM anon, authenticated;
        GRANT SELECT ON public.stream_gaps TO anon, authenticated;
        GRANT ALL ON public.stream_gaps TO service_role;
        GRANT USAGE, SELECT ON SEQUENCE public.stream_gaps_id_seq TO service_role;
    ELSE
        RAISE NOTICE 'Supabase roles anon/authenticated/service_role not found: RLS policies skipped';
    END IF;
END
$rls$;
