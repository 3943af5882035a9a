"""Simulated listed options for the simulator: a chain per underlying, priced by Black-Scholes.

Expirations: every weekday of the next two weeks from the session date (0DTE included) plus the
third Friday of the next three months; strikes every `strike_step` within ±15% of the opening
price. Implied volatility is a fixed surface (`VolSurface`), equity-style: higher for lower
strikes, steeper for nearer expirations, and a level per expiration (a term structure), drawn from
the seed; prices and greeks follow the underlying.
`quote()` gives a contract's LEVELONE_OPTIONS fields keyed as on the wire; `chain()` the REST
`/marketdata/v1/chains` body; `expiration_chain()` the `/marketdata/v1/expirationchain` body.
Deterministic: volumes and open interest come from a seeded generator per contract.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass
from datetime import date, datetime, time, timedelta
from typing import Any

from streaming_service.simulator.market import NEW_YORK

__all__ = ["OptionBook", "SimContract", "VolSurface", "black_scholes", "occ_symbol"]

RATE = 0.04  # risk-free rate, continuous
_YEAR_MS = 365.0 * 86_400_000


def occ_symbol(root: str, expiration: date, put_call: str, strike: float) -> str:
    """Schwab's streaming key: root padded to 6, YYMMDD, C/P, strike x 1000 in 8 digits."""
    return f"{root:<6}{expiration:%y%m%d}{put_call}{round(strike * 1000):08d}"


def black_scholes(spot: float, strike: float, years: float, vol: float, call: bool) -> dict[str, float]:
    """Price and greeks (theta per calendar day, vega per 1 vol point), European, no dividends."""
    years = max(years, 1e-6)
    root_t = math.sqrt(years)
    d1 = (math.log(spot / strike) + (RATE + vol * vol / 2) * years) / (vol * root_t)
    d2 = d1 - vol * root_t
    pdf = math.exp(-d1 * d1 / 2) / math.sqrt(2 * math.pi)
    discount = math.exp(-RATE * years)

    def cdf(x: float) -> float:
        return 0.5 * (1 + math.erf(x / math.sqrt(2)))

    if call:
        price = spot * cdf(d1) - strike * discount * cdf(d2)
        delta = cdf(d1)
        theta = -spot * pdf * vol / (2 * root_t) - RATE * strike * discount * cdf(d2)
    else:
        price = strike * discount * cdf(-d2) - spot * cdf(-d1)
        delta = cdf(d1) - 1
        theta = -spot * pdf * vol / (2 * root_t) + RATE * strike * discount * cdf(-d2)
    return {
        "price": max(price, 0.0),
        "delta": delta,
        "gamma": pdf / (spot * vol * root_t),
        "theta": theta / 365,
        "vega": spot * pdf * root_t / 100,
    }


@dataclass(frozen=True, slots=True)
class VolSurface:
    """Implied volatility by strike and days to expiration, equity-style.

    At the money (`center`, the strike nearest the opening price) an expiration `days` out has
    `base + term * sqrt(days / 91) + front * exp(-days / 3)`: the long end rises by `term` over three
    months, and the nearest expirations carry a premium `front` that fades within days (so the
    term structure dips, then rises). Across strikes the smile falls with log-moneyness (puts and
    low strikes dearer) and curves up in the wings, both more steeply the nearer the expiration."""

    center: float
    base: float
    term: float
    front: float

    @classmethod
    def drawn(cls, center: float, rng: random.Random) -> VolSurface:
        """A surface around `center` with its levels drawn from `rng` (deterministic per seed)."""
        base, term, front = rng.uniform(0.17, 0.22), rng.uniform(0.01, 0.03), rng.uniform(0.03, 0.06)
        return cls(center, base=base, term=term, front=front)

    def vol(self, strike: float, days: int) -> float:
        """The implied volatility (a fraction, at least 0.05) of `strike` expiring in `days`."""
        moneyness = math.log(strike / self.center)
        steepness = math.sqrt(30 / (days + 3))
        at_the_money = self.base + self.term * math.sqrt(days / 91) + self.front * math.exp(-days / 3)
        smile = steepness * (-0.5 * moneyness + 4.0 * moneyness * moneyness)
        return max(0.05, at_the_money + smile)


@dataclass(slots=True)
class SimContract:
    """One simulated contract and its running trade state."""

    symbol: str
    underlying: str
    call: bool
    strike: float
    expiration: date
    vol: float
    open_interest: int
    rng: random.Random
    total_volume: int = 0
    last: float | None = None


class OptionBook:
    """The listed options of one underlying. See the module docstring."""

    def __init__(self, underlying: str, session_date: date, open_price: float, *, seed: int = 0) -> None:
        self.underlying = underlying
        self.session_date = session_date
        self.strike_step = 1.0 if open_price >= 50 else 0.5
        low = math.ceil(open_price * 0.85 / self.strike_step) * self.strike_step
        count = int(open_price * 0.30 / self.strike_step)
        self.strikes = [round(low + i * self.strike_step, 2) for i in range(count + 1)]
        self.expirations = _expirations(session_date)
        center = self.strikes[len(self.strikes) // 2]
        self.surface = VolSurface.drawn(center, random.Random(f"{seed}:{underlying}:surface"))
        self._seed = seed
        self._contracts: dict[str, SimContract] = {}

    def contract(self, symbol: str) -> SimContract | None:
        """The contract for a streaming key, or None if this book does not list it."""
        found = self._contracts.get(symbol)
        if found is not None:
            return found
        if len(symbol) != 21 or symbol[:6].rstrip() != self.underlying:
            return None
        try:
            expiration = datetime.strptime(symbol[6:12], "%y%m%d").date()
            strike = int(symbol[13:]) / 1000
        except ValueError:
            return None
        if symbol[12] not in "CP" or expiration not in self.expirations or strike not in self.strikes:
            return None
        return self._make(expiration, symbol[12] == "C", strike)

    def _make(self, expiration: date, call: bool, strike: float) -> SimContract:
        symbol = occ_symbol(self.underlying, expiration, "C" if call else "P", strike)
        if symbol not in self._contracts:
            rng = random.Random(f"{self._seed}:{symbol}")
            vol = self.surface.vol(strike, (expiration - self.session_date).days)
            self._contracts[symbol] = SimContract(
                symbol, self.underlying, call, strike, expiration, vol, rng.randint(100, 20_000), rng
            )
        return self._contracts[symbol]

    def quote(self, contract: SimContract, spot: float, now_ms: int, *, trade: bool) -> dict[str, Any]:
        """The contract's wire fields now; `trade` may add a trade (volume and last price)."""
        expires = datetime.combine(contract.expiration, time(16, 0), NEW_YORK).timestamp() * 1000
        greeks = black_scholes(
            spot, contract.strike, (expires - now_ms) / _YEAR_MS, contract.vol, contract.call
        )
        value = greeks["price"]
        half_spread = max(0.01, round(value * 0.01, 2))
        bid = max(0.0, round(value - half_spread, 2))
        ask = round(max(value, 0.01) + half_spread, 2)
        if trade and contract.rng.random() < 0.2:
            contract.total_volume += contract.rng.choice((1, 1, 2, 5, 10, 25))
            contract.last = round(max(0.01, value), 2)
        fields: dict[str, Any] = {
            "2": bid,
            "3": ask,
            "8": contract.total_volume,
            "9": contract.open_interest,
            "10": round(contract.vol * 100, 3),
            "12": contract.expiration.year,
            "20": contract.strike,
            "21": "C" if contract.call else "P",
            "22": self.underlying,
            "23": contract.expiration.month,
            "26": contract.expiration.day,
            "27": (contract.expiration - self.session_date).days,
            "28": round(greeks["delta"], 4),
            "29": round(greeks["gamma"], 4),
            "30": round(greeks["theta"], 4),
            "31": round(greeks["vega"], 4),
            "35": spot,
            "38": now_ms,
        }
        if contract.last is not None:
            fields["4"] = contract.last
        return fields

    def expiration_chain(self) -> dict[str, Any]:
        return {
            "expirationList": [
                {
                    "expirationDate": e.isoformat(),
                    "daysToExpiration": (e - self.session_date).days,
                    "expirationType": "M" if _third_friday(e) else "W",
                    "settlementType": "P",
                    "optionRoots": self.underlying,
                    "standard": True,
                }
                for e in self.expirations
            ]
        }

    def chain(self, spot: float, now_ms: int, query: dict[str, str]) -> dict[str, Any]:
        """The `/marketdata/v1/chains` body for `query` (contractType, strikeCount, fromDate, toDate)."""
        first = date.fromisoformat(query["fromDate"]) if "fromDate" in query else date.min
        last = date.fromisoformat(query["toDate"]) if "toDate" in query else date.max
        kinds = {"CALL": (True,), "PUT": (False,)}.get(query.get("contractType", "ALL"), (True, False))
        strikes = sorted(self.strikes, key=lambda k: (abs(k - spot), k))
        if "strikeCount" in query:
            strikes = strikes[: int(query["strikeCount"])]
        maps: dict[str, dict[str, dict[str, list[dict[str, Any]]]]] = {
            "callExpDateMap": {},
            "putExpDateMap": {},
        }
        for expiration in (e for e in self.expirations if first <= e <= last):
            dte = (expiration - self.session_date).days
            for call in kinds:
                side = maps["callExpDateMap" if call else "putExpDateMap"].setdefault(
                    f"{expiration}:{dte}", {}
                )
                for strike in sorted(strikes):
                    contract = self._make(expiration, call, strike)
                    side[f"{strike:.1f}"] = [
                        _chain_entry(contract, self.quote(contract, spot, now_ms, trade=False))
                    ]
        return {
            "symbol": self.underlying,
            "status": "SUCCESS",
            "underlying": None,
            "strategy": "SINGLE",
            "interval": 0.0,
            "isDelayed": False,
            "isIndex": False,
            "interestRate": RATE * 100,
            "underlyingPrice": spot,
            "volatility": 29.0,
            "daysToExpiration": 0.0,
            "numberOfContracts": sum(len(s) for m in maps.values() for s in m.values()),
            **maps,
        }


def _chain_entry(contract: SimContract, fields: dict[str, Any]) -> dict[str, Any]:
    return {
        "putCall": "CALL" if contract.call else "PUT",
        "symbol": contract.symbol,
        "description": f"{contract.underlying} {contract.expiration:%m/%d/%Y} {contract.strike:.2f} "
        f"{'C' if contract.call else 'P'}",
        "bid": fields["2"],
        "ask": fields["3"],
        "last": fields.get("4", 0.0),
        "totalVolume": fields["8"],
        "openInterest": fields["9"],
        "volatility": fields["10"],
        "delta": fields["28"],
        "gamma": fields["29"],
        "theta": fields["30"],
        "vega": fields["31"],
        "strikePrice": contract.strike,
        "expirationDate": f"{contract.expiration.isoformat()}T21:00:00.000+00:00",
        "daysToExpiration": fields["27"],
        "multiplier": 100.0,
        "optionRoot": contract.underlying,
    }


def _third_friday(day: date) -> bool:
    return day.weekday() == 4 and 15 <= day.day <= 21


def _expirations(start: date) -> list[date]:
    days = [start + timedelta(days=i) for i in range(15)]
    weekly = [d for d in days if d.weekday() < 5]
    monthly = []
    for month_offset in range(1, 4):
        year, month = (
            start.year + (start.month - 1 + month_offset) // 12,
            (start.month - 1 + month_offset) % 12 + 1,
        )
        monthly.append(next(d for d in (date(year, month, day) for day in range(15, 22)) if _third_friday(d)))
    return sorted(set(weekly) | set(monthly))
