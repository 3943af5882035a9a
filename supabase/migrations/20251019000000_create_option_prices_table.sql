-- Option contract snapshots, one row per (underlying, time, type, strike, expiration).
-- Safe to run more than once: every statement is IF NOT EXISTS.

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
