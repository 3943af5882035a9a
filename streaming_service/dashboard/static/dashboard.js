// Dashboard of schwab-supabase streamer: price with SMA9/VWAP and volume, stream gaps, the option
// smile and table, for one ticker and one New York day; the latest day updates live.
//
// Data comes from config.json's `source`: "api" (this service's JSON API, same origin) or
// "supabase" (Supabase's REST API with the anon key, read-only). Every URL of this server is
// relative, so the page works from any directory of any static host.
//
// Test hook, `window.dashboard`:
//   ready          true once the first load is drawn (data, or the "no rows" message)
//   source         "api" | "supabase" (null until config.json is read)
//   ticker, day    what is shown (day: the New York date, YYYY-MM-DD)
//   live           true while the page says "live": the shown day is the latest one (it refreshes
//                  every refresh_s) and /healthz says streaming (a page without a health URL: always)
//   lastTimestamp  ISO timestamp of the newest row drawn
//   updates        number of live refreshes applied
//   loadMs         milliseconds the last full load took
//   error          the message shown in the error banner, or null
//   counts()       {price, sma9, vwap, volume}: points in each chart series
//   smile()        [{expiration, type, points}]: one entry per drawn smile line
//   gaps()         number of shaded gaps
//   proof          the daily proof's line in the header (the shown day's, or the latest before
//                  it), or null when none is stored
//   format(v, d)   a number as the option table shows it, to d decimals
//   layout()       where the price chart draws, as [top, bottom] in CSS pixels from the chart's top:
//                  {plot (above the time axis), price (the price line's extent), priceAxis (the
//                  height the price axis labels), volume (the tallest bar's top to the bars' base)}
//   dayBounds(day) [start, end) of a New York day as UTC ISO strings (what Supabase reads are bounded by)

const LWC = window.LightweightCharts;
const NY = "America/New_York";
const PAGE = 1000; // rows per Supabase request (its server caps each answer at 1000 rows)
const OPTION_COLUMNS = "option_symbol,option_type,strike_price,expiration_date,bid,ask,last_price," +
  "implied_volatility,delta,gamma,theta,vega,volume,open_interest";
const STATES = {
  streaming: "streaming",
  waiting_for_open: "waiting for the open",
  reconnecting: "reconnecting",
  sink_down: "database down",
  reauth_needed: "Schwab login needed",
  stopped: "stopped",
  not_running: "not running",
};
const MIN_GAP_PX = 8;
const EXPIRY_COLORS = ["#2962ff", "#e91e63", "#00897b", "#f57c00", "#7b1fa2", "#6d4c41"];

const $ = (id) => document.getElementById(id);
const clock = { timeZone: NY, hour: "2-digit", minute: "2-digit", hourCycle: "h23" };
const nyDate = new Intl.DateTimeFormat("en-CA", { timeZone: NY, year: "numeric", month: "2-digit", day: "2-digit" });
const nyTime = new Intl.DateTimeFormat("en-GB", { ...clock, second: "2-digit" });
const nyMinute = new Intl.DateTimeFormat("en-GB", clock);
const nyDay = new Intl.DateTimeFormat("en-US", { timeZone: NY, month: "short", day: "numeric" });
const nyParts = new Intl.DateTimeFormat("en-US", {
  timeZone: NY, hourCycle: "h23", year: "numeric", month: "numeric", day: "numeric",
  hour: "numeric", minute: "numeric", second: "numeric",
});

const state = {
  config: null,
  data: null, // the data source: {tickers, series, since, options, gaps}, in the JSON API's shapes
  ticker: null,
  day: null,
  requested: null, // the day asked for (null: the latest)
  failed: false, // the last load failed
  following: false, // the shown day is the latest one: live refreshes add its new rows
  loading: false, // a load of another ticker or day is under way (the subtitle says "loading…")
  health: undefined, // the last /healthz answer; null: not reachable; undefined: not asked (yet)
  latestDay: null,
  generation: 0, // bumped by every full load: answers for an older view are dropped
  timer: null,
  chart: null,
  series: null, // {price, sma9, vwap, volume}
  times: [], // chart times (epoch s) of the price series, ascending
  tail: null, // {second, rows: Map<ms, row>}: the rows of the newest second (it may still grow)
  rows: 0, // rows of the day drawn (the API's count; live rows added)
  liveAdded: 0, // chart points added by live refreshes since the last full load
  moved: false, // the user scrolled or zoomed the price chart
  downsampled: false,
  gaps: [],
  smileChart: null,
  smileSeries: new Map(), // "expiration|type" -> series
  optionsTimestamp: undefined,
};

const dashboard = {
  ready: false,
  source: null,
  ticker: null,
  day: null,
  live: false,
  lastTimestamp: null,
  updates: 0,
  loadMs: null,
  error: null,
  counts: () => {
    const s = state.series;
    const n = (series) => (series ? series.data().length : 0);
    return { price: n(s?.price), sma9: n(s?.sma9), vwap: n(s?.vwap), volume: n(s?.volume) };
  },
  smile: () => [...state.smileSeries].map(([key, series]) => {
    const [expiration, type] = key.split("|");
    return { expiration, type, points: series.data().length };
  }),
  gaps: () => state.gaps.length,
  proof: null,
  format: (v, digits) => fmt(v, digits),
  layout: () => {
    const { chart, series } = state;
    const top = $("chart").getBoundingClientRect().top;
    const paneTop = (s) => s.getPane().getHTMLElement().getBoundingClientRect().top - top;
    const extent = (s, low, high) => [high, low].map((v) => paneTop(s) + s.priceToCoordinate(v));
    const prices = series.price.data().map((p) => p.value);
    const volumes = series.volume.data().map((p) => p.value);
    return {
      plot: [0, $("chart").clientHeight - chart.timeScale().height()],
      price: extent(series.price, Math.min(...prices), Math.max(...prices)),
      priceAxis: [paneTop(series.price), paneTop(series.price) + series.price.getPane().getHeight()],
      volume: extent(series.volume, 0, Math.max(...volumes)),
    };
  },
  dayBounds: (day) => dayBounds(day).map(iso),
};
window.dashboard = dashboard;

// --- time helpers -------------------------------------------------------------------------------

/** The New York date (YYYY-MM-DD) of an instant (ms). */
const nyDateOf = (ms) => nyDate.format(new Date(ms));

/** New York's offset from UTC at the instant `ms`, in ms (e.g. -5 h in winter). */
function nyOffset(ms) {
  const p = Object.fromEntries(nyParts.formatToParts(new Date(ms)).map((x) => [x.type, x.value]));
  const wall = Date.UTC(+p.year, +p.month - 1, +p.day, +p.hour, +p.minute, +p.second);
  return wall - Math.floor(ms / 1000) * 1000;
}

/** [start, end) of a New York day as UTC instants (ms): midnight to the next midnight, DST-aware. */
function dayBounds(day) {
  const midnight = (y, m, d) => {
    const wall = Date.UTC(y, m - 1, d);
    let ms = wall - nyOffset(wall);
    ms = wall - nyOffset(ms); // again, in case the offset differs at the guessed instant
    return ms;
  };
  const [y, m, d] = day.split("-").map(Number);
  return [midnight(y, m, d), midnight(y, m, d + 1)];
}

const iso = (ms) => new Date(ms).toISOString();

// --- HTTP ---------------------------------------------------------------------------------------

class HttpError extends Error {
  constructor(message, status, code) {
    super(message);
    this.status = status;
    this.code = code;
  }
}

/** GET `url` as JSON; a non-2xx answer throws HttpError with the body's `error` or `message`. */
async function getJSON(url, headers = {}) {
  let response;
  try {
    response = await fetch(url, { headers, cache: "no-store" });
  } catch (err) {
    // A server that is down and one that refuses this page's origin (CORS) look the same here.
    const why = /^https?:/.test(url) ? `${err.message}: down, or not allowing this page's origin` : err.message;
    throw new HttpError(`cannot reach ${url.split("?")[0]} (${why})`, 0, null);
  }
  const text = await response.text();
  let body = null;
  try {
    body = text ? JSON.parse(text) : null;
  } catch {
    body = null;
  }
  if (!response.ok) {
    const message = (body && (body.error || body.message)) || `HTTP ${response.status} from ${url.split("?")[0]}`;
    throw new HttpError(message, response.status, body && body.code);
  }
  return body;
}

// --- data sources: both answer in the JSON API's shapes -----------------------------------------

function apiSource(config) {
  const q = (params) => new URLSearchParams(Object.entries(params).filter(([, v]) => v != null)).toString();
  return {
    async tickers() {
      const body = await getJSON("api/tickers");
      return body.tickers.length ? body.tickers : config.tickers || [];
    },
    series: (ticker, day) => getJSON(`api/series?${q({ ticker, day })}`),
    // Rows from `since` on, of the latest day (the answer's `day` says which).
    since: (ticker, since) => getJSON(`api/series?${q({ ticker, since })}`),
    options: (ticker, day) => getJSON(`api/options?${q({ ticker, day })}`),
    gaps: (ticker, day) => getJSON(`api/gaps?${q({ ticker, day })}`),
    checks: (ticker, day) => getJSON(`api/checks?${q({ ticker, day })}`),
  };
}

function supabaseSource(config) {
  const base = `${config.supabase_url.replace(/\/+$/, "")}/rest/v1/`;
  const headers = { apikey: config.anon_key, Authorization: `Bearer ${config.anon_key}` };
  const enc = encodeURIComponent;
  const get = (table, query) => getJSON(`${base}${table}?${query}`, headers);

  /** All rows of a select, a page at a time (the server caps each answer whatever `limit` says). */
  async function all(table, query) {
    const rows = [];
    for (let offset = 0; ; offset += PAGE) {
      const page = await get(table, `${query}&limit=${PAGE}&offset=${offset}`);
      rows.push(...page);
      if (page.length < PAGE) return rows;
    }
  }

  /** Equity rows joined with their indicators, from `fromMs` (inclusive) to `toMs` (exclusive, or open). */
  async function rows(ticker, fromMs, toMs) {
    const range = `ticker=eq.${enc(ticker)}&timestamp=gte.${enc(iso(fromMs))}` +
      (toMs == null ? "" : `&timestamp=lt.${enc(iso(toMs))}`) + "&order=timestamp.asc";
    const [equity, indicators] = await Promise.all([
      all("equity_data", `select=timestamp,price,volume&${range}`),
      all("indicators", `select=timestamp,sma9,vwap&${range}`),
    ]);
    const byTime = new Map(indicators.map((r) => [Date.parse(r.timestamp), r]));
    return equity.map((r) => {
      const ind = byTime.get(Date.parse(r.timestamp));
      return { ...r, sma9: ind ? ind.sma9 : null, vwap: ind ? ind.vwap : null };
    });
  }

  async function latestDay(ticker) {
    const query = `select=timestamp&ticker=eq.${enc(ticker)}&order=timestamp.desc&limit=1`;
    const last = await get("equity_data", query);
    return last.length ? nyDateOf(Date.parse(last[0].timestamp)) : null;
  }

  return {
    tickers: async () => config.tickers || [],
    async series(ticker, day) {
      day = day || (await latestDay(ticker));
      if (!day) return { ticker, day: null, rows: 0, downsampled: false, points: [] };
      const [start, end] = dayBounds(day);
      const points = await rows(ticker, start, end);
      return { ticker, day, rows: points.length, downsampled: false, points };
    },
    async since(ticker, since) {
      const points = await rows(ticker, Date.parse(since), null);
      const day = points.length ? nyDateOf(Date.parse(points[points.length - 1].timestamp)) : null;
      return { ticker, day, rows: points.length, downsampled: false, points };
    },
    async options(ticker, day) {
      const [start, end] = dayBounds(day);
      const last = await get("option_prices", `select=timestamp&ticker=eq.${enc(ticker)}` +
        `&timestamp=gte.${enc(iso(start))}&timestamp=lt.${enc(iso(end))}&order=timestamp.desc&limit=1`);
      if (!last.length) return { timestamp: null, contracts: [] };
      const timestamp = last[0].timestamp;
      const contracts = await all("option_prices", `select=${OPTION_COLUMNS}&ticker=eq.${enc(ticker)}` +
        `&timestamp=eq.${enc(timestamp)}&order=expiration_date.asc,strike_price.asc,option_type.asc`);
      return { timestamp, contracts };
    },
    async gaps(ticker, day) {
      const [start, end] = dayBounds(day);
      try {
        const gaps = await all("stream_gaps", "select=started_at,ended_at,cause,equity_backfilled_rows," +
          `volume_missing,options_missed&ticker=eq.${enc(ticker)}&started_at=lt.${enc(iso(end))}` +
          `&ended_at=gte.${enc(iso(start))}&order=started_at.asc`);
        return { table: true, gaps };
      } catch (err) {
        const noTable = err.status === 404 || err.code === "42P01" || err.code === "PGRST205";
        if (noTable) return { table: false, gaps: [] }; // no shading
        throw err;
      }
    },
    async checks(ticker, day) {
      try {
        const rows = await get("volume_checks", `select=*&ticker=eq.${enc(ticker)}&day=lte.${enc(day)}` +
          "&order=day.desc&limit=1");
        return { ticker, day, table: true, check: rows[0] || null };
      } catch (err) {
        if (err.status === 404 || err.code === "42P01" || err.code === "PGRST205") {
          return { ticker, day, table: false, check: null };
        }
        throw err;
      }
    },
  };
}

// --- the price chart ----------------------------------------------------------------------------

/** A time axis label in New York time: HH:MM on a mark that starts a minute, HH:MM:SS on one
 * between whole minutes (without its seconds it would read the same as the minute's mark). */
function tickMark(time, type) {
  const date = new Date(time * 1000);
  if (type === LWC.TickMarkType.TimeWithSeconds) return nyTime.format(date);
  if (type === LWC.TickMarkType.Time) return nyMinute.format(date);
  return nyDay.format(date);
}

function createPriceChart() {
  const chart = LWC.createChart($("chart"), {
    autoSize: true,
    layout: { attributionLogo: true, background: { color: "#ffffff" }, textColor: "#333" },
    localization: { timeFormatter: (t) => `${nyDay.format(t * 1000)} ${nyTime.format(t * 1000)}` },
    // A whole day of one-second rows fits: fitContent() may squeeze bars below a pixel. The day's
    // first and last bars are the edges: no scrolling past them, and the labels there are moved in
    // to be read whole instead of being cut by the chart's edge.
    timeScale: {
      timeVisible: true, secondsVisible: true, tickMarkFormatter: tickMark, minBarSpacing: 0.001,
      fixLeftEdge: true, fixRightEdge: true,
    },
    // Both panes' axes: a label at a pane's edge is drawn whole or not at all.
    rightPriceScale: { scaleMargins: { top: 0.08, bottom: 0.05 }, entireTextOnly: true },
    grid: { vertLines: { color: "#f0f0f0" }, horzLines: { color: "#f0f0f0" } },
  });
  const line = (color, title, width) => chart.addSeries(LWC.LineSeries, {
    color, title, lineWidth: width, priceLineVisible: false, lastValueVisible: title === "price",
  });
  const series = {
    price: line("#1e293b", "price", 2),
    sma9: line("#f59e0b", "SMA9", 1),
    vwap: line("#8b5cf6", "VWAP", 1),
    // Volume in a pane of its own below price (a quarter of the height), with its own axis.
    volume: chart.addSeries(LWC.HistogramSeries, {
      color: "rgba(38, 166, 154, 0.5)", priceFormat: { type: "volume" },
      priceLineVisible: false, lastValueVisible: false, title: "volume",
    }, 1),
  };
  const [pricePane, volumePane] = chart.panes();
  pricePane.setStretchFactor(3);
  volumePane.setStretchFactor(1);
  series.volume.priceScale().applyOptions({ scaleMargins: { top: 0.1, bottom: 0 } });
  // Once the user scrolls or zooms, live rows no longer refit the day; a double click does again.
  const moved = () => { state.moved = true; };
  for (const event of ["wheel", "mousedown", "touchstart", "keydown"]) {
    $("chart").addEventListener(event, moved, { passive: true });
  }
  $("chart").addEventListener("dblclick", () => {
    state.moved = false;
    chart.timeScale().fitContent();
  });
  chart.timeScale().subscribeVisibleLogicalRangeChange(placeGaps);
  chart.timeScale().subscribeSizeChange(placeGaps);
  state.chart = chart;
  state.series = series;
}

/** Group rows by whole second: one chart point each (last price/SMA9/VWAP, summed volume). */
function bySecond(rows) {
  const seconds = [];
  for (const row of rows) {
    const ms = Date.parse(row.timestamp);
    const second = Math.floor(ms / 1000);
    const last = seconds[seconds.length - 1];
    if (last && last.second === second) last.rows.set(ms, row);
    else seconds.push({ second, rows: new Map([[ms, row]]) });
  }
  return seconds;
}

/** The chart points of one second's rows (a Map ms -> row). */
function pointsOf({ second, rows }) {
  const ordered = [...rows].sort((a, b) => a[0] - b[0]).map(([, r]) => r);
  const last = ordered[ordered.length - 1];
  const lastOf = (key) => {
    for (let i = ordered.length - 1; i >= 0; i--) if (ordered[i][key] != null) return ordered[i][key];
    return null;
  };
  const volume = ordered.reduce((sum, r) => sum + (r.volume || 0), 0);
  return {
    time: second, price: last.price, sma9: lastOf("sma9"), vwap: lastOf("vwap"), volume, timestamp: last.timestamp,
  };
}

/** Draw a whole series; `view`: a time range to show (null: the whole day). */
function drawSeries(points, view = null) {
  const seconds = bySecond(points);
  const merged = seconds.map(pointsOf);
  const { price, sma9, vwap, volume } = state.series;
  price.setData(merged.map((p) => ({ time: p.time, value: p.price })));
  sma9.setData(merged.filter((p) => p.sma9 != null).map((p) => ({ time: p.time, value: p.sma9 })));
  vwap.setData(merged.filter((p) => p.vwap != null).map((p) => ({ time: p.time, value: p.vwap })));
  volume.setData(merged.map((p) => ({ time: p.time, value: p.volume })));
  state.times = merged.map((p) => p.time);
  state.tail = seconds.length ? seconds[seconds.length - 1] : null;
  dashboard.lastTimestamp = merged.length ? merged[merged.length - 1].timestamp : null;
  state.liveAdded = 0;
  if (view && merged.length) state.chart.timeScale().setVisibleRange(view);
  else state.chart.timeScale().fitContent();
}

/** The time range shown if the user zoomed or scrolled, null while the whole day is in view. */
function zoomed() {
  return state.moved ? state.chart.timeScale().getVisibleRange() : null;
}

/** Apply rows from the newest second on: the newest second is rebuilt, later ones appended. */
function applyLive(points) {
  const { price, sma9, vwap, volume } = state.series;
  const wholeDay = !state.moved;
  let added = 0;
  for (const group of bySecond(points)) {
    if (state.tail && group.second < state.tail.second) continue; // older than what is drawn
    if (state.tail && group.second === state.tail.second) {
      for (const [ms, row] of group.rows) {
        if (!state.tail.rows.has(ms)) state.rows++;
        state.tail.rows.set(ms, row);
      }
    } else {
      state.rows += group.rows.size;
      state.tail = group;
      state.times.push(group.second);
      added++;
    }
    const p = pointsOf(state.tail);
    price.update({ time: p.time, value: p.price });
    if (p.sma9 != null) sma9.update({ time: p.time, value: p.sma9 });
    if (p.vwap != null) vwap.update({ time: p.time, value: p.vwap });
    volume.update({ time: p.time, value: p.volume });
    dashboard.lastTimestamp = p.timestamp;
  }
  state.liveAdded += added;
  if (added && wholeDay) state.chart.timeScale().fitContent(); // keep the whole day in view
  if (added) placeGaps();
  showStatus();
  return added;
}

/** ISO timestamp of the first row of the newest second: refreshing from there rebuilds that second. */
function sinceTimestamp() {
  const first = Math.min(...state.tail.rows.keys());
  return state.tail.rows.get(first).timestamp;
}

// --- gaps ---------------------------------------------------------------------------------------

/** The x coordinate of time `t` (epoch s): interpolated between the neighbouring points (the time
 * scale only places times that have a point), half a bar outside the first and last. */
function xOf(scale, t) {
  const times = state.times;
  const n = times.length;
  const x = (i) => scale.logicalToCoordinate(i);
  const half = n > 1 ? (x(1) - x(0)) / 2 : 4;
  if (t <= times[0]) return t < times[0] ? x(0) - half : x(0);
  if (t >= times[n - 1]) return t > times[n - 1] ? x(n - 1) + half : x(n - 1);
  let lo = 0;
  let hi = n - 1; // times[lo] < t <= times[hi]
  while (hi - lo > 1) {
    const mid = (lo + hi) >> 1;
    if (times[mid] < t) lo = mid;
    else hi = mid;
  }
  return x(lo) + ((t - times[lo]) / (times[hi] - times[lo])) * (x(hi) - x(lo));
}

/** The chart's subtitle and the header's health line, from one place: the latest day is shown
 * (`state.following`) and the service's last /healthz answer (`state.health`). "live" only when
 * both hold: the day is followed and the service streams (or the page has no health URL to ask). */
function showStatus() {
  const health = state.health;
  dashboard.live = state.following && (!state.config.health || health?.state === "streaming");
  const n = (x) => x.toLocaleString("en-US");
  if (!state.loading) {
    const drawn = state.downsampled ? ` (${n(state.times.length)} points drawn)` : "";
    $("subtitle").textContent = !state.day ? "" :
      `${state.day} · ${n(state.rows)} rows${drawn}${dashboard.live ? " · live" : ""}`;
  }
  if (health === undefined) return; // not asked yet, or no health URL
  const el = $("health");
  if (health === null) {
    el.textContent = "service not reachable";
    el.className = "health bad";
    return;
  }
  const parts = [STATES[health.state] || String(health.state).replaceAll("_", " ")];
  if (health.spool) parts.push(`spool ${health.spool.depth}`);
  const age = health.tickers && health.tickers[state.ticker] && health.tickers[state.ticker].last_data_age_s;
  if (age != null) parts.push(`data ${age < 10 ? age.toFixed(1) : Math.round(age)} s old`);
  if (health.sink && health.sink.failing_for_s != null) {
    const why = health.sink.last_error ? `: ${health.sink.last_error}` : "";
    parts.push(`database failing for ${Math.round(health.sink.failing_for_s)} s${why}`);
  }
  el.textContent = parts.join(" · ");
  el.className = `health ${health.ok ? "ok" : "bad"}`;
}

/** The header's daily proof badge: "proof Nov 24: 389/390 minutes match, 12,345,678 of
 * 12,345,700 shares" (green when every minute matches), hidden when none is stored. */
function drawProof(answer) {
  const check = answer && answer.check;
  const el = $("proof");
  el.hidden = !check;
  dashboard.proof = null;
  if (!check) return;
  const n = (x) => Number(x).toLocaleString("en-US");
  const day = nyDay.format(new Date(`${check.day}T12:00:00Z`));
  const filled = check.minutes_filled ? `, ${n(check.minutes_filled)} filled` : "";
  el.textContent = `proof ${day}: ${check.minutes_matching}/${check.minutes_checked} minutes match, ` +
    `${n(check.shares_recorded)} of ${n(check.shares_candles)} shares${filled}`;
  el.className = `proof ${check.minutes_matching === check.minutes_checked ? "ok" : "bad"}`;
  el.title = check.worst_minute == null ? "every minute matches Schwab's price history" :
    `worst minute ${nyMinute.format(new Date(check.worst_minute))} New York: ` +
    `${check.worst_minute_diff > 0 ? "+" : ""}${n(check.worst_minute_diff)} shares against its candle`;
  dashboard.proof = el.textContent;
}

/** Read and show the daily proof; a failure only hides the badge (the chart matters more). */
async function refreshProof(generation) {
  let answer = null;
  try {
    if (state.day && state.data.checks) answer = await state.data.checks(state.ticker, state.day);
  } catch {
    answer = null;
  }
  if (generation === state.generation) drawProof(answer);
}

function placeGaps() {
  const layer = $("gap-layer");
  layer.replaceChildren();
  if (!state.chart || !state.times.length) return;
  const scale = state.chart.timeScale();
  const width = scale.width();
  const plotHeight = $("chart").clientHeight - scale.height();
  for (const gap of state.gaps) {
    let x1 = xOf(scale, Date.parse(gap.started_at) / 1000);
    let x2 = xOf(scale, Date.parse(gap.ended_at) / 1000);
    if (x1 == null || x2 == null || x2 < 0 || x1 > width) continue;
    if (x2 - x1 < MIN_GAP_PX) { // the time scale has no room for missing time: keep it visible
      const middle = (x1 + x2) / 2;
      [x1, x2] = [middle - MIN_GAP_PX / 2, middle + MIN_GAP_PX / 2];
    }
    x1 = Math.max(0, x1);
    x2 = Math.min(width, x2);
    // The shade lets the mouse through to the chart; its tab on the time axis carries the tooltip.
    const shade = document.createElement("div");
    shade.className = `gap gap-${gap.cause}`;
    const across = { left: `${x1}px`, width: `${x2 - x1}px` };
    Object.assign(shade.style, across, { top: "0", height: `${plotHeight}px` });
    const tab = document.createElement("div");
    tab.className = `gap-tab gap-${gap.cause}`;
    Object.assign(tab.style, across, { top: `${plotHeight}px`, height: `${scale.height()}px` });
    tab.title = describeGap(gap);
    layer.append(shade, tab);
  }
}

function describeGap(gap) {
  const from = nyTime.format(new Date(gap.started_at));
  const to = nyTime.format(new Date(gap.ended_at));
  const parts = [`${gap.cause} gap ${from}–${to}`, `${gap.equity_backfilled_rows} rows backfilled`];
  if (gap.volume_missing) parts.push(`${gap.volume_missing.toLocaleString("en-US")} shares missing`);
  if (gap.options_missed) parts.push("option snapshots missed");
  return parts.join(", ");
}

function drawGaps(answer) {
  state.gaps = answer.table ? answer.gaps : [];
  $("gap-list").replaceChildren(...state.gaps.map((gap) => {
    const li = document.createElement("li");
    li.textContent = describeGap(gap);
    return li;
  }));
  placeGaps();
}

// --- options ------------------------------------------------------------------------------------

function createSmileChart() {
  state.smileChart = LWC.createOptionsChart($("smile"), {
    autoSize: true,
    layout: { attributionLogo: true, background: { color: "#ffffff" }, textColor: "#333" },
    localization: { priceFormatter: (v) => `${v.toFixed(1)} %` },
    grid: { vertLines: { color: "#f0f0f0" }, horzLines: { color: "#f0f0f0" } },
  });
}

/** `v` to `digits` decimals, "—" if null; a value that rounds to zero is "0.000", never "-0.000". */
function fmt(v, digits = 2) {
  if (v == null) return "—";
  const text = Number(v).toFixed(digits);
  return Number(text) === 0 ? (0).toFixed(digits) : text;
}

function drawOptions(answer) {
  const contracts = answer.contracts || [];
  $("options-time").textContent = answer.timestamp ? `snapshot ${nyTime.format(new Date(answer.timestamp))}` : "";
  $("options-message").hidden = contracts.length > 0;
  $("options-message").textContent = `no option snapshot for ${state.ticker} on ${state.day}`;

  // The smile: one line per (expiration, type), IV in % against strike.
  const lines = new Map();
  for (const c of contracts) {
    if (c.implied_volatility == null) continue;
    const key = `${c.expiration_date}|${c.option_type}`;
    if (!lines.has(key)) lines.set(key, new Map());
    lines.get(key).set(c.strike_price, c.implied_volatility * 100);
  }
  for (const [key, series] of state.smileSeries) {
    if (!lines.has(key)) {
      state.smileChart.removeSeries(series);
      state.smileSeries.delete(key);
    }
  }
  const expirations = [...new Set([...lines.keys()].map((k) => k.split("|")[0]))].sort();
  const legend = [];
  for (const key of [...lines.keys()].sort()) {
    const [expiration, type] = key.split("|");
    const color = EXPIRY_COLORS[expirations.indexOf(expiration) % EXPIRY_COLORS.length];
    let series = state.smileSeries.get(key);
    if (!series) {
      series = state.smileChart.addSeries(LWC.LineSeries, {
        color, lineWidth: 2, lineStyle: type === "PUT" ? LWC.LineStyle.Dashed : LWC.LineStyle.Solid,
        priceLineVisible: false, lastValueVisible: false, pointMarkersVisible: true, pointMarkersRadius: 2,
      });
      state.smileSeries.set(key, series);
    }
    const points = [...lines.get(key)].sort((a, b) => a[0] - b[0]);
    series.setData(points.map(([strike, iv]) => ({ time: strike, value: iv })));
    const entry = document.createElement("span");
    entry.className = type === "PUT" ? "put" : "call";
    entry.style.setProperty("--c", color);
    entry.textContent = `${expiration} ${type}`;
    legend.push(entry);
  }
  $("smile-legend").replaceChildren(...legend);
  $("smile").hidden = lines.size === 0;
  if (answer.timestamp !== state.optionsTimestamp) state.smileChart.timeScale().fitContent();
  state.optionsTimestamp = answer.timestamp;

  const sorted = [...contracts].sort((a, b) =>
    a.expiration_date.localeCompare(b.expiration_date) || a.strike_price - b.strike_price ||
    a.option_type.localeCompare(b.option_type));
  $("options-table").tBodies[0].replaceChildren(...sorted.map((c) => {
    const tr = document.createElement("tr");
    tr.className = c.option_type === "PUT" ? "put" : "call";
    tr.title = c.option_symbol || "";
    const iv = c.implied_volatility == null ? "—" : `${(c.implied_volatility * 100).toFixed(1)} %`;
    for (const text of [fmt(c.strike_price), c.option_type, c.expiration_date, fmt(c.bid), fmt(c.ask),
      fmt(c.last_price), iv, fmt(c.delta, 3)]) {
      const td = document.createElement("td");
      td.textContent = text;
      tr.append(td);
    }
    return tr;
  }));
}

// --- page ---------------------------------------------------------------------------------------

function showError(message) {
  dashboard.error = message || null;
  $("error").hidden = !message;
  $("error").textContent = message || "";
}

function stamp() {
  $("updated").textContent = `updated ${new Date().toLocaleTimeString("en-GB", { hourCycle: "h23" })}`;
}

/** Read /healthz into `state.health` (null: not reachable) and show it. */
async function refreshHealth() {
  const url = state.config.health;
  if (!url) return;
  try {
    const response = await fetch(url, { cache: "no-store" });
    state.health = await response.json(); // 503 is a normal answer with the same body
  } catch {
    state.health = null;
  }
  showStatus();
}

/** Load and draw `ticker` on `day` (null: its latest day with rows). `again`: the same view
 * reloaded (no "loading…", a zoomed-in time range kept). */
async function load(ticker, day, again = false) {
  const generation = ++state.generation;
  const started = performance.now();
  const view = again && state.times.length ? zoomed() : null;
  if (!again) state.moved = false;
  clearTimeout(state.timer);
  state.ticker = ticker;
  state.requested = day;
  dashboard.ticker = ticker;
  $("title").textContent = ticker;
  if (!again) {
    state.loading = true;
    $("subtitle").textContent = "loading…";
  }
  try {
    const series = await state.data.series(ticker, day);
    if (generation !== state.generation) return;
    state.loading = false;
    state.day = series.day;
    if (!day) state.latestDay = series.day; // a picked day is compared with the latest seen
    dashboard.day = state.day;
    state.following = state.day != null && state.day === state.latestDay;
    $("day").value = state.day || "";
    $("day").max = state.latestDay || "";
    const empty = series.points.length === 0;
    $("message").hidden = !empty;
    $("message").textContent = state.day ? `no rows for ${ticker} on ${state.day}` : `no rows for ${ticker} yet`;
    $("chart-wrap").hidden = empty;
    $("options").hidden = !state.day;
    drawSeries(series.points, view);
    state.rows = series.rows;
    state.downsampled = series.downsampled;
    showStatus();
    if (state.day) {
      const [options, gaps] = await Promise.all([
        state.data.options(ticker, state.day), state.data.gaps(ticker, state.day),
      ]);
      if (generation !== state.generation) return;
      drawGaps(gaps);
      drawOptions(options);
      await refreshProof(generation);
    } else {
      drawProof(null);
      drawGaps({ table: false, gaps: [] });
      drawOptions({ timestamp: null, contracts: [] });
    }
    state.failed = false;
    showError(null);
    stamp();
    dashboard.loadMs = Math.round(performance.now() - started);
    dashboard.ready = true;
  } catch (err) {
    if (generation !== state.generation) return;
    if (again) { // what is drawn stays; the next refresh tries again
      showError(err.message);
      schedule(generation);
      return;
    }
    state.failed = true; // the next refresh loads again
    state.loading = false;
    state.following = false;
    showStatus();
    // Nothing of another ticker or day stays on screen under this one's title.
    drawSeries([]);
    drawGaps({ table: false, gaps: [] });
    drawOptions({ timestamp: null, contracts: [] });
    $("chart-wrap").hidden = true;
    $("message").hidden = true;
    $("options").hidden = true;
    $("subtitle").textContent = "";
    showError(err.message);
  }
  schedule(generation);
}

function schedule(generation) {
  clearTimeout(state.timer);
  state.timer = setTimeout(() => refresh(generation), (state.config.refresh_s || 5) * 1000);
}

/** One live refresh: health always; new rows, options and gaps while the latest day is shown. */
async function refresh(generation) {
  await refreshHealth();
  if (generation !== state.generation) return;
  try {
    if (state.following && state.tail) {
      const answer = await state.data.since(state.ticker, sinceTimestamp());
      if (generation !== state.generation) return;
      if (answer.day && answer.day !== state.day) {
        await load(state.ticker, null); // a new day began: follow it
        return;
      }
      applyLive(answer.points);
      // Rows drawn one per second after a downsampled day crowd its time scale: sample again.
      if (state.downsampled && state.liveAdded > Math.max(100, state.times.length / 10)) {
        dashboard.updates++;
        await load(state.ticker, null, true);
        return;
      }
      const [options, gaps] = await Promise.all([
        state.data.options(state.ticker, state.day), state.data.gaps(state.ticker, state.day),
      ]);
      if (generation !== state.generation) return;
      drawOptions(options);
      drawGaps(gaps);
      await refreshProof(generation);
      dashboard.updates++;
      showError(null);
      stamp();
    } else if (state.failed || !state.day) {
      await load(state.ticker, state.requested); // failed, or no rows yet: look again
      return;
    }
  } catch (err) {
    if (generation !== state.generation) return;
    showError(err.message);
  }
  schedule(generation);
}

async function start() {
  dashboard.startedAt = performance.now();
  let config;
  try {
    config = await getJSON("config.json");
  } catch (err) {
    showError(`config.json: ${err.message}`);
    return;
  }
  state.config = config;
  dashboard.source = config.source || null;
  if (config.error) {
    showError(config.error);
    return;
  }
  if (!LWC) {
    showError("lightweight-charts.standalone.production.js did not load");
    return;
  }
  if (config.source === "api") state.data = apiSource(config);
  else if (config.source === "supabase") state.data = supabaseSource(config);
  else {
    showError(`config.json: unknown source ${JSON.stringify(config.source)}`);
    return;
  }
  if (!config.health) $("health").hidden = true;
  createPriceChart();
  createSmileChart();
  refreshHealth();

  let tickers;
  try {
    tickers = await state.data.tickers();
  } catch (err) {
    showError(err.message);
    tickers = config.tickers || [];
  }
  if (!tickers.length) {
    showError("no tickers: none recorded and none configured");
    return;
  }
  const select = $("ticker");
  select.replaceChildren(...tickers.map((t) => new Option(t, t)));
  $("ticker-label").hidden = tickers.length < 2;
  select.addEventListener("change", () => load(select.value, null));
  $("day").addEventListener("change", () => load(state.ticker, $("day").value || null));
  await load(tickers[0], null);
}

start();
