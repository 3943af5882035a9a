-- Equity prices and the indicators computed from them, one row per (ticker, timestamp).
-- Safe to run more than once: every statement is IF NOT EXISTS.
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
