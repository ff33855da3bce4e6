//! `weather`: current conditions and a short forecast, as a Backworks plugin.
//!
//! Routes (configure them in the host; the city may come from the path, the query
//! or the config):
//!
//! | request | answer |
//! |---|---|
//! | `GET /weather/{city}` | conditions now and a 3-day forecast for the city |
//! | `GET /weather?city=oslo` | the same, with the city in the query |
//! | `GET /weather` | the same, for `default_city` |
//! | `GET /weather/cities` (a route ending in `/cities`) | the cities the model knows |
//!
//! Query parameters: `units=metric|imperial` (default: the config's `units`) and
//! `days=1..7` (default 3). An unknown city is a 404 and a bad parameter a 400, both
//! with a JSON `{"error": ...}`.
//!
//! Config:
//!
//! ```json
//! {"api_key": "...", "units": "metric", "default_city": "london", "now": "2025-07-04T12:00:00Z"}
//! ```
//!
//! `api_key` is required (the real service this example stands in for needs one,
//! so a missing key is refused at init, when it is cheap to fix); `units` defaults
//! to metric; `now` pins the model's clock for reproducible demos and tests.
//!
//! The weather comes from a deterministic model (`model.rs`), not a network
//! service, so every answer is computed in microseconds: the plugin declares itself
//! thread-safe and non-blocking.

mod clock;
mod model;

use std::borrow::Cow;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;
use std::time::{SystemTime, UNIX_EPOCH};

use backworks_plugin_sdk::json::AsJsonString;
use backworks_plugin_sdk::*;

use crate::clock::UnixTime;
use crate::model::{City, Day, Units, CITIES};

const DEFAULT_DAYS: i64 = 3;
const MAX_DAYS: i64 = 7;
const CONFIG_KEYS: [&str; 4] = ["api_key", "units", "default_city", "now"];

/// The instance's settings, fixed at init.
#[derive(Debug)]
struct Config {
    units: Units,
    default_city: Option<&'static City>,
    /// A pinned clock, or `None` for the system's.
    now: Option<UnixTime>,
}

impl Config {
    fn from_json(config: &Value) -> PluginResult<Config> {
        if !config.is_object() {
            return Err(PluginError::config(format!(
                "the config must be an object (got {})",
                config.type_name()
            )));
        }
        match &config["api_key"] {
            Value::Null => {
                return Err(PluginError::config(
                    "api_key is required: set it in the weather plugin's config (e.g. api_key: \"demo\")",
                ));
            }
            Value::String(key) if !key.trim().is_empty() => {}
            Value::String(_) => return Err(PluginError::config("api_key must not be empty")),
            other => {
                return Err(PluginError::config(format!(
                    "api_key must be a string (got {})",
                    other.type_name()
                )))
            }
        }
        let units = match &config["units"] {
            Value::Null => Units::Metric,
            Value::String(text) => Units::parse(text).ok_or_else(|| {
                PluginError::config(format!(
                    "units must be \"metric\" or \"imperial\" (got {text:?})"
                ))
            })?,
            other => {
                return Err(PluginError::config(format!(
                    "units must be a string (got {})",
                    other.type_name()
                )))
            }
        };
        let default_city = match &config["default_city"] {
            Value::Null => None,
            Value::String(name) => Some(model::find(name).ok_or_else(|| {
                PluginError::config(format!(
                    "default_city {name:?} is not a city the model knows; known: {}",
                    known_cities()
                ))
            })?),
            other => {
                return Err(PluginError::config(format!(
                    "default_city must be a string (got {})",
                    other.type_name()
                )))
            }
        };
        let now = match &config["now"] {
            Value::Null => None,
            Value::String(text) => Some(clock::parse_utc(text).ok_or_else(|| {
                PluginError::config(format!(
                    "now must be a UTC time like \"2025-07-04T12:00:00Z\" (got {text:?})"
                ))
            })?),
            other => {
                return Err(PluginError::config(format!(
                    "now must be a string (got {})",
                    other.type_name()
                )))
            }
        };
        Ok(Config {
            units,
            default_city,
            now,
        })
    }
}

fn known_cities() -> String {
    CITIES.iter().map(|c| c.key).collect::<Vec<_>>().join(", ")
}

/// The plugin. Everything mutable is atomic or set once, so `handle` may run on
/// many threads at once.
#[derive(Default)]
pub struct WeatherPlugin {
    config: OnceLock<Config>,
    served: AtomicU64,
    unknown_cities: AtomicU64,
}

impl WeatherPlugin {
    fn config(&self) -> PluginResult<&Config> {
        self.config
            .get()
            .ok_or_else(|| PluginError::processing("the weather plugin was not initialised"))
    }

    /// The report for `city` at time `now`: conditions now and `days` days of
    /// forecast, written straight into the answer's body (no `Value` tree: this is
    /// the plugin's per-request work, and the tree was most of its cost).
    fn report(city: &City, now: UnixTime, units: Units, days: i64) -> Response {
        let (today, hour) = model::local_time(city, now);
        let day = Day::of(city, today);
        let temperature = day.temperature_at(hour);
        let daytime = (6.0..20.0).contains(&hour);
        let minutes = (hour * 60.0).floor() as i64;
        let feels_like = model::feels_like(temperature, day.humidity, day.wind_kmh);
        // About 160 bytes a forecast day on top of 400: one allocation.
        let capacity = 512 + 192 * days as usize;
        Response::json_with(200, capacity, |w| {
            w.object(|o| {
                o.field("city", city.name)
                    .field("country", city.country)
                    .object("coordinates", |o| {
                        o.field("latitude", city.latitude)
                            .field("longitude", city.longitude);
                    })
                    .field("units", units.as_str())
                    .object("unit_labels", |o| {
                        o.field("temperature", units.temperature_label())
                            .field("wind_speed", units.speed_label());
                    })
                    .field("observed_at", AsJsonString(clock::Utc(now)))
                    .field(
                        "local_time",
                        AsJsonString(format_args!("{:02}:{:02}", minutes / 60, minutes % 60)),
                    )
                    .object("current", |o| {
                        o.field("temperature", units.temperature(temperature))
                            .field("feels_like", units.temperature(feels_like))
                            .field("condition", day.condition(temperature, daytime))
                            .field("humidity", day.humidity as i64)
                            .field("precipitation_chance", day.precipitation as i64)
                            .field("wind_speed", units.speed(day.wind_kmh))
                            .field("wind_direction", model::compass(day.wind_degrees));
                    })
                    .array("forecast", |a| {
                        for d in today..today + days {
                            // Today's is already computed (the model is pure).
                            let day = if d == today {
                                day.clone()
                            } else {
                                Day::of(city, d)
                            };
                            a.object(|o| {
                                o.field("date", AsJsonString(clock::Date(d)))
                                    .field("high", units.temperature(day.high_c))
                                    .field("low", units.temperature(day.low_c))
                                    .field("condition", day.condition(day.mean_c, true))
                                    .field("precipitation_chance", day.precipitation as i64)
                                    .field("humidity", day.humidity as i64)
                                    .field("wind_speed", units.speed(day.wind_kmh));
                            });
                        }
                    })
                    .field(
                        "source",
                        "Backworks weather model: deterministic, built in, no network",
                    );
            })
        })
    }

    fn cities() -> Response {
        Response::json_with(200, 2560, |w| {
            w.object(|o| {
                o.field("count", CITIES.len()).array("cities", |a| {
                    for c in CITIES {
                        a.object(|o| {
                            o.field("key", c.key)
                                .field("name", c.name)
                                .field("country", c.country)
                                .field("latitude", c.latitude)
                                .field("longitude", c.longitude);
                        });
                    }
                });
            })
        })
    }
}

fn now_utc() -> UnixTime {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

#[async_trait]
impl BackworksPlugin for WeatherPlugin {
    fn name(&self) -> &str {
        "weather"
    }

    fn version(&self) -> &str {
        env!("CARGO_PKG_VERSION")
    }

    fn description(&self) -> &str {
        "Current conditions and a 3-day forecast for 25 cities, from a deterministic built-in model"
    }

    fn flags(&self) -> PluginFlags {
        // Pure computation over immutable tables: safe to run concurrently, and fast
        // enough for the host's event-loop thread.
        PluginFlags::THREAD_SAFE | PluginFlags::NONBLOCKING
    }

    async fn initialize(&self, config: &Value) -> PluginResult<()> {
        let parsed = Config::from_json(config)?;
        if let Some(map) = config.as_object() {
            for key in map.keys().filter(|k| !CONFIG_KEYS.contains(&k.as_str())) {
                log_warn!(
                    "ignoring unknown config key {key:?} (known: {})",
                    CONFIG_KEYS.join(", ")
                );
            }
        }
        log_info!(
            "weather plugin ready: {} units, default city {}, {} cities{}",
            parsed.units,
            parsed.default_city.map_or("none", |c| c.key),
            CITIES.len(),
            parsed.now.map_or(String::new(), |t| format!(
                ", clock pinned at {}",
                clock::format_utc(t)
            )),
        );
        self.config
            .set(parsed)
            .map_err(|_| PluginError::init("the weather plugin was initialised twice"))
    }

    /// Reads the request in place (no copy of it) and writes the answer straight
    /// into its body: the per-request path.
    fn handle_view(&self, req: &RequestView<'_>) -> PluginResult<Response> {
        let config = self.config()?;
        if req.method != "GET" && req.method != "HEAD" {
            return Ok(Response::error(
                405,
                format!("{} is not allowed here; use GET", req.method),
            )
            .with_header("allow", "GET, HEAD"));
        }
        if req.endpoint.ends_with("/cities") && req.param("city").is_none() {
            return Ok(Self::cities());
        }

        let units = match req.query_param("units") {
            None => config.units,
            Some(text) => match Units::parse(&text) {
                Some(units) => units,
                None => {
                    return Ok(Response::bad_request(format!(
                        "units must be \"metric\" or \"imperial\" (got {text:?})"
                    )))
                }
            },
        };
        let days = match req.query_param("days") {
            None => DEFAULT_DAYS,
            Some(text) => match text.parse::<i64>() {
                Ok(days) if (1..=MAX_DAYS).contains(&days) => days,
                _ => {
                    return Ok(Response::bad_request(format!(
                        "days must be a whole number from 1 to {MAX_DAYS} (got {text:?})"
                    )))
                }
            },
        };

        let requested = req
            .param("city")
            .map(Cow::Borrowed)
            .or_else(|| req.query_param("city"));
        let city = match (&requested, config.default_city) {
            (Some(name), _) => match model::find(name) {
                Some(city) => city,
                None => {
                    self.unknown_cities.fetch_add(1, Ordering::Relaxed);
                    log_info!(
                        "unknown city {name:?} requested (request {})",
                        req.request_id
                    );
                    let known: Vec<&str> = CITIES.iter().map(|c| c.key).collect();
                    return Ok(Response::json(
                        404,
                        json!({"error": format!("unknown city {name:?}"), "known_cities": known}),
                    ));
                }
            },
            (None, Some(city)) => city,
            (None, None) => {
                return Ok(Response::bad_request("no city given: use /weather/{city} or ?city=, or set default_city in the config"));
            }
        };

        self.served.fetch_add(1, Ordering::Relaxed);
        log_debug!(
            "weather for {} in {} units, {} days (request {})",
            city.key,
            units,
            days,
            req.request_id
        );
        let report = Self::report(city, config.now.unwrap_or_else(now_utc), units, days);
        // The model changes by the hour: let caches keep an answer for a few minutes.
        Ok(report.with_header("cache-control", "public, max-age=300"))
    }

    async fn handle(&self, req: &Request) -> PluginResult<Response> {
        self.handle_view(&req.view())
    }

    async fn health_check(&self) -> PluginResult<PluginHealth> {
        let Some(config) = self.config.get() else {
            return Ok(PluginHealth::unhealthy("not initialised"));
        };
        Ok(PluginHealth::healthy("forecasting from the built-in model")
            .with_detail("cities", CITIES.len())
            .with_detail("units", config.units.as_str())
            .with_detail("default_city", config.default_city.map(|c| c.key))
            .with_detail("api_key", "configured")
            .with_detail(
                "clock",
                config.now.map_or("system".to_owned(), clock::format_utc),
            )
            .with_detail("requests_served", self.served.load(Ordering::Relaxed))
            .with_detail(
                "unknown_city_requests",
                self.unknown_cities.load(Ordering::Relaxed),
            ))
    }

    async fn shutdown(&self) -> PluginResult<()> {
        log_info!(
            "weather plugin stopping after {} requests",
            self.served.load(Ordering::Relaxed)
        );
        Ok(())
    }
}

export_plugin!(WeatherPlugin);

#[cfg(test)]
mod tests {
    use super::*;

    fn plugin(config: Value) -> WeatherPlugin {
        let plugin = WeatherPlugin::default();
        block_on(plugin.initialize(&config)).unwrap();
        plugin
    }

    fn get(plugin: &WeatherPlugin, req: Request) -> (u16, Value) {
        let resp = block_on(plugin.handle(&req)).unwrap();
        (resp.status, resp.body_json().unwrap())
    }

    const NOW: &str = "2025-07-04T12:00:00Z";

    #[test]
    fn config_errors_say_what_is_wrong() {
        let error = |config: Value| Config::from_json(&config).unwrap_err().to_string();
        assert!(error(json!({})).contains("api_key is required"));
        assert!(error(json!({"api_key": ""})).contains("api_key must not be empty"));
        assert!(error(json!({"api_key": 7})).contains("api_key must be a string (got number)"));
        assert!(error(json!({"api_key": "k", "units": "kelvin"}))
            .contains(r#"units must be "metric" or "imperial" (got "kelvin")"#));
        assert!(error(json!({"api_key": "k", "default_city": "atlantis"}))
            .contains("known: auckland, beijing"));
        assert!(
            error(json!({"api_key": "k", "now": "yesterday"})).contains("now must be a UTC time")
        );
        assert!(error(json!([1])).contains("must be an object (got array)"));
    }

    #[test]
    fn answers_for_path_query_and_default_city() {
        let p = plugin(json!({"api_key": "k", "default_city": "oslo", "now": NOW}));
        let by_path = get(
            &p,
            Request::new("GET", "/weather/oslo")
                .with_endpoint("/weather/{city}")
                .with_param("city", "oslo"),
        );
        let by_query = get(&p, Request::new("GET", "/weather").with_query("city=Oslo"));
        let by_default = get(&p, Request::new("GET", "/weather"));
        assert_eq!(by_path.0, 200);
        assert_eq!(by_path, by_query);
        assert_eq!(by_path, by_default);
        assert_eq!(by_path.1["city"], "Oslo");
        assert_eq!(by_path.1["forecast"].as_array().unwrap().len(), 3);
        assert_eq!(by_path.1["forecast"][0]["date"], "2025-07-04");
    }

    #[test]
    fn bad_requests_are_4xx_json() {
        let p = plugin(json!({"api_key": "k", "now": NOW}));
        assert_eq!(get(&p, Request::new("GET", "/weather")).0, 400);
        assert_eq!(
            get(
                &p,
                Request::new("GET", "/weather").with_query("city=oslo&units=kelvin")
            )
            .0,
            400
        );
        assert_eq!(
            get(
                &p,
                Request::new("GET", "/weather").with_query("city=oslo&days=0")
            )
            .0,
            400
        );
        let (status, body) = get(
            &p,
            Request::new("GET", "/weather").with_query("city=atlantis"),
        );
        assert_eq!(
            (status, &body["error"]),
            (404, &json!("unknown city \"atlantis\""))
        );
        assert_eq!(
            get(
                &p,
                Request::new("DELETE", "/weather/oslo").with_param("city", "oslo")
            )
            .0,
            405
        );
        let (status, body) = get(
            &p,
            Request::new("GET", "/weather/cities").with_endpoint("/weather/cities"),
        );
        assert_eq!(
            (status, body["count"].as_u64()),
            (200, Some(CITIES.len() as u64))
        );
    }
}
