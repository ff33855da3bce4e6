//! A deterministic weather model: climate normals per city, a seasonal cycle, a
//! daily cycle, and day-to-day variation from a hash of the city and the date.
//!
//! The same city, day and hour always give the same weather, on every machine and
//! in every process, so answers are reproducible (and testable) without a network.
//! Everything is computed in metric units; [`Units`] converts at the edge.

use std::f64::consts::TAU;
use std::fmt;

use crate::clock::{self, UnixTime, DAY};

/// Climate normals of one city.
#[derive(Debug)]
pub struct City {
    /// Lookup key: lower-case, words joined by `-`.
    pub key: &'static str,
    pub name: &'static str,
    /// ISO 3166 alpha-2.
    pub country: &'static str,
    pub latitude: f64,
    pub longitude: f64,
    /// Annual mean temperature, °C.
    pub mean_c: f64,
    /// Half the difference between the warmest and the coldest month, °C.
    pub seasonal_c: f64,
    /// Typical difference between a day's high and low, °C.
    pub diurnal_c: f64,
    /// Mean relative humidity, %.
    pub humidity: f64,
    /// How often it rains, 0 (desert) to 1 (rainforest).
    pub wetness: f64,
    /// Mean wind speed, km/h.
    pub wind_kmh: f64,
}

macro_rules! cities {
    ($($key:literal $name:literal $country:literal $lat:literal $lon:literal
       $mean:literal $seasonal:literal $diurnal:literal $humidity:literal $wetness:literal $wind:literal;)*) => {
        &[$(City {
            key: $key, name: $name, country: $country, latitude: $lat, longitude: $lon,
            mean_c: $mean, seasonal_c: $seasonal, diurnal_c: $diurnal, humidity: $humidity,
            wetness: $wetness, wind_kmh: $wind,
        }),*]
    };
}

/// Every city the model knows, alphabetically by key.
pub static CITIES: &[City] = cities! {
//  key            name            cc    lat      lon     mean  seas  diur  hum   wet   wind
    "auckland"     "Auckland"      "NZ"  -36.85   174.76  15.5  4.2   7.0   78.0  0.45  18.0;
    "beijing"      "Beijing"       "CN"   39.90   116.41  13.0  15.0  10.0  55.0  0.20  10.0;
    "berlin"       "Berlin"        "DE"   52.52    13.40  10.0  9.5   8.0   70.0  0.38  14.0;
    "buenos-aires" "Buenos Aires"  "AR"  -34.60   -58.38  18.0  6.0   9.0   72.0  0.30  14.0;
    "cairo"        "Cairo"         "EG"   30.04    31.24  22.5  7.5   12.0  50.0  0.02  13.0;
    "cape-town"    "Cape Town"     "ZA"  -33.92    18.42  17.0  4.5   9.0   70.0  0.25  20.0;
    "chicago"      "Chicago"       "US"   41.88   -87.63  10.5  14.0  9.0   68.0  0.32  18.0;
    "dubai"        "Dubai"         "AE"   25.20    55.27  28.0  7.5   9.0   60.0  0.02  14.0;
    "london"       "London"        "GB"   51.51    -0.13  11.5  6.5   7.0   75.0  0.45  15.0;
    "los-angeles"  "Los Angeles"   "US"   34.05  -118.24  18.5  4.0   9.0   65.0  0.08  10.0;
    "madrid"       "Madrid"        "ES"   40.42    -3.70  15.0  10.0  12.0  55.0  0.20  11.0;
    "mexico-city"  "Mexico City"   "MX"   19.43   -99.13  17.0  3.0   13.0  55.0  0.35   9.0;
    "moscow"       "Moscow"        "RU"   55.76    37.62   5.8  14.0  7.0   76.0  0.38  12.0;
    "mumbai"       "Mumbai"        "IN"   19.08    72.88  27.5  2.5   7.0   75.0  0.35  11.0;
    "nairobi"      "Nairobi"       "KE"   -1.29    36.82  18.5  1.5   12.0  65.0  0.30  12.0;
    "new-york"     "New York"      "US"   40.71   -74.01  13.0  12.0  8.0   63.0  0.32  16.0;
    "oslo"         "Oslo"          "NO"   59.91    10.75   6.0  10.0  6.0   72.0  0.40  12.0;
    "paris"        "Paris"         "FR"   48.86     2.35  12.5  8.0   8.0   72.0  0.40  13.0;
    "reykjavik"    "Reykjavik"     "IS"   64.15   -21.94   5.0  5.5   5.0   78.0  0.50  22.0;
    "rome"         "Rome"          "IT"   41.90    12.50  16.0  8.5   10.0  68.0  0.25  10.0;
    "sao-paulo"    "São Paulo"     "BR"  -23.55   -46.63  20.0  3.5   9.0   75.0  0.40  10.0;
    "singapore"    "Singapore"     "SG"    1.35   103.82  27.5  0.8   7.0   84.0  0.55   9.0;
    "sydney"       "Sydney"        "AU"  -33.87   151.21  18.5  4.5   7.0   68.0  0.30  17.0;
    "tokyo"        "Tokyo"         "JP"   35.68   139.69  16.0  10.5  7.0   68.0  0.35  12.0;
    "toronto"      "Toronto"       "CA"   43.65   -79.38   9.0  13.0  9.0   70.0  0.33  16.0;
};

/// Other spellings people use.
const ALIASES: &[(&str, &str)] = &[
    ("nyc", "new-york"),
    ("la", "los-angeles"),
    ("são-paulo", "sao-paulo"),
    ("cdmx", "mexico-city"),
];

/// The city called `name`, in any case, with spaces, `_` or `-` between words.
///
/// Compares `name`'s normal form (lower case, words joined by `-`) with each key as
/// it goes, instead of building it: this runs on every request.
pub fn find(name: &str) -> Option<&'static City> {
    if is_key_shaped(name) {
        // Already in normal form (what routes usually carry): compare as is.
        let key = ALIASES
            .iter()
            .find(|(alias, _)| *alias == name)
            .map_or(name, |(_, key)| key);
        return CITIES
            .binary_search_by(|c| c.key.cmp(key))
            .ok()
            .map(|i| &CITIES[i]);
    }
    let is = |key: &str| normal_form(name).eq(key.chars());
    let key = ALIASES
        .iter()
        .find(|(alias, _)| is(alias))
        .map(|(_, key)| *key);
    match key {
        Some(key) => CITIES.iter().find(|c| c.key == key),
        None => CITIES.iter().find(|c| is(c.key)),
    }
}

/// True when `name` is its own normal form: ASCII lower-case words joined by single `-`s.
fn is_key_shaped(name: &str) -> bool {
    !name.is_empty()
        && name.split('-').all(|w| {
            !w.is_empty()
                && w.bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
        })
}

/// The characters of `name` lower-cased, its words (split at whitespace, `_` and
/// `-`) joined by single `-`s.
fn normal_form(name: &str) -> impl Iterator<Item = char> + '_ {
    name.split(|c: char| c.is_whitespace() || c == '_' || c == '-')
        .filter(|w| !w.is_empty())
        .enumerate()
        .flat_map(|(i, word)| {
            (i > 0)
                .then_some('-')
                .into_iter()
                .chain(word.chars().flat_map(char::to_lowercase))
        })
}

/// The unit system of an answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Units {
    /// °C and km/h.
    Metric,
    /// °F and mph.
    Imperial,
}

impl Units {
    pub fn parse(text: &str) -> Option<Units> {
        if text.eq_ignore_ascii_case("metric") {
            Some(Units::Metric)
        } else if text.eq_ignore_ascii_case("imperial") {
            Some(Units::Imperial)
        } else {
            None
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Units::Metric => "metric",
            Units::Imperial => "imperial",
        }
    }

    pub fn temperature_label(self) -> &'static str {
        match self {
            Units::Metric => "°C",
            Units::Imperial => "°F",
        }
    }

    pub fn speed_label(self) -> &'static str {
        match self {
            Units::Metric => "km/h",
            Units::Imperial => "mph",
        }
    }

    /// A temperature in this system, from °C, to one decimal.
    pub fn temperature(self, celsius: f64) -> f64 {
        round1(match self {
            Units::Metric => celsius,
            Units::Imperial => celsius * 9.0 / 5.0 + 32.0,
        })
    }

    /// A speed in this system, from km/h, to one decimal.
    pub fn speed(self, kmh: f64) -> f64 {
        round1(match self {
            Units::Metric => kmh,
            Units::Imperial => kmh / 1.609_344,
        })
    }
}

impl fmt::Display for Units {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

fn round1(x: f64) -> f64 {
    (x * 10.0).round() / 10.0
}

/// A number in [-1, 1] fixed by the city, the day and what it is for: FNV-1a over
/// the three, finished with splitmix64's mixer. Stable across runs and platforms.
fn noise(city: &City, day: i64, purpose: &str) -> f64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in city
        .key
        .bytes()
        .chain(day.to_le_bytes())
        .chain(purpose.bytes())
    {
        h = (h ^ u64::from(byte)).wrapping_mul(0x0000_0100_0000_01b3);
    }
    h ^= h >> 30;
    h = h.wrapping_mul(0xbf58_476d_1ce4_e5b9);
    h ^= h >> 27;
    h = h.wrapping_mul(0x94d0_49bb_1331_11eb);
    h ^= h >> 31;
    (h >> 11) as f64 / (1u64 << 53) as f64 * 2.0 - 1.0
}

/// One local day in one city, in metric units.
#[derive(Debug, Clone, PartialEq)]
pub struct Day {
    /// Days since 1970-01-01 (the city's local date).
    pub day: i64,
    pub mean_c: f64,
    pub high_c: f64,
    pub low_c: f64,
    pub humidity: f64,
    /// Chance of precipitation, %.
    pub precipitation: f64,
    pub wind_kmh: f64,
    pub wind_degrees: f64,
}

impl Day {
    pub fn of(city: &City, day: i64) -> Day {
        // The warmest day of the year is about 19 July in the north, 17 January in the south.
        let warmest = if city.latitude >= 0.0 { 200.0 } else { 17.0 };
        let season = (TAU * (clock::day_of_year(day) as f64 - warmest) / 365.25).cos();
        let mean_c = city.mean_c + city.seasonal_c * season + 3.0 * noise(city, day, "temperature");
        let precipitation = (city.wetness * 100.0 + 30.0 * noise(city, day, "precipitation"))
            .clamp(0.0, 100.0)
            .round();
        // Overcast, wet days swing less between night and day.
        let range = city.diurnal_c
            * (1.0 + 0.25 * noise(city, day, "range"))
            * (1.0 - 0.4 * precipitation / 100.0);
        let humidity =
            (city.humidity + 12.0 * noise(city, day, "humidity") + 0.15 * (precipitation - 50.0))
                .clamp(5.0, 100.0)
                .round();
        Day {
            day,
            mean_c,
            high_c: mean_c + range / 2.0,
            low_c: mean_c - range / 2.0,
            humidity,
            precipitation,
            wind_kmh: (city.wind_kmh * (1.0 + 0.5 * noise(city, day, "wind"))).max(0.0),
            wind_degrees: (noise(city, day, "direction") + 1.0) * 180.0,
        }
    }

    /// The temperature at local solar hour `hour` (lowest near 03:00, highest near 15:00).
    pub fn temperature_at(&self, hour: f64) -> f64 {
        self.mean_c + (self.high_c - self.low_c) / 2.0 * (TAU * (hour - 15.0) / 24.0).cos()
    }

    pub fn condition(&self, temperature_c: f64, daytime: bool) -> &'static str {
        let freezing = temperature_c <= 0.5;
        match self.precipitation {
            p if p >= 70.0 => {
                if freezing {
                    "snow"
                } else {
                    "rain"
                }
            }
            p if p >= 50.0 => {
                if freezing {
                    "snow showers"
                } else {
                    "showers"
                }
            }
            p if p >= 30.0 => "cloudy",
            p if p >= 15.0 => "partly cloudy",
            _ => {
                if daytime {
                    "sunny"
                } else {
                    "clear"
                }
            }
        }
    }
}

/// Local solar time of `t` in a city: `(day number, hour of day in [0, 24))`.
pub fn local_time(city: &City, t: UnixTime) -> (i64, f64) {
    let local = t as f64 + city.longitude / 15.0 * 3600.0;
    let day = (local / DAY as f64).floor() as i64;
    (day, (local - (day * DAY) as f64) / 3600.0)
}

/// How warm it feels: the Australian apparent temperature (humidity and wind
/// included), in °C.
pub fn feels_like(temperature_c: f64, humidity: f64, wind_kmh: f64) -> f64 {
    let vapour_pressure =
        humidity / 100.0 * 6.105 * (17.27 * temperature_c / (237.7 + temperature_c)).exp();
    temperature_c + 0.33 * vapour_pressure - 0.70 * (wind_kmh / 3.6) - 4.0
}

/// The 16-point compass direction of a bearing.
pub fn compass(degrees: f64) -> &'static str {
    const POINTS: [&str; 16] = [
        "N", "NNE", "NE", "ENE", "E", "ESE", "SE", "SSE", "S", "SSW", "SW", "WSW", "W", "WNW",
        "NW", "NNW",
    ];
    POINTS[((degrees.rem_euclid(360.0) / 22.5).round() as usize) % 16]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_cities_by_any_spelling() {
        for name in ["London", " london ", "LONDON"] {
            assert_eq!(find(name).unwrap().key, "london");
        }
        for name in ["New York", "new_york", "new-york", "NYC"] {
            assert_eq!(find(name).unwrap().key, "new-york");
        }
        assert_eq!(find("São Paulo").unwrap().key, "sao-paulo");
        assert!(find("atlantis").is_none());
        assert!(find("").is_none());
        assert!(find(" - _ ").is_none());
        assert_eq!(find("  Buenos__ AIRES ").unwrap().key, "buenos-aires");
        assert!(find("london-").is_some() && find("lon don").is_none());
        // The fast path (already a key) and the general one agree on every key and alias.
        for key in CITIES
            .iter()
            .map(|c| c.key)
            .chain(ALIASES.iter().map(|a| a.0))
        {
            assert!(std::ptr::eq(
                find(key).unwrap(),
                find(&key.to_uppercase()).unwrap()
            ));
        }
    }

    #[test]
    fn the_table_is_sorted_and_plausible() {
        assert!(CITIES.len() >= 20);
        assert!(CITIES.windows(2).all(|w| w[0].key < w[1].key));
        for c in CITIES {
            assert_eq!(find(c.key).map(|f| f.key), Some(c.key));
            assert!(
                (-90.0..=90.0).contains(&c.latitude) && (-180.0..=180.0).contains(&c.longitude)
            );
        }
    }

    #[test]
    fn the_model_is_deterministic_and_seasonal() {
        let oslo = find("oslo").unwrap();
        let july = clock::days_from_civil(2025, 7, 15);
        let january = clock::days_from_civil(2025, 1, 15);
        assert_eq!(Day::of(oslo, july), Day::of(oslo, july));
        assert!(Day::of(oslo, july).mean_c > Day::of(oslo, january).mean_c + 10.0);
        let sydney = find("sydney").unwrap();
        assert!(
            Day::of(sydney, january).mean_c > Day::of(sydney, july).mean_c,
            "seasons flip in the south"
        );
        let d = Day::of(oslo, july);
        assert!(
            d.high_c > d.low_c
                && (0.0..=100.0).contains(&d.precipitation)
                && (5.0..=100.0).contains(&d.humidity)
        );
        assert!(
            (d.temperature_at(15.0) - d.high_c).abs() < 1e-9
                && (d.temperature_at(3.0) - d.low_c).abs() < 1e-9
        );
    }

    #[test]
    fn units_convert() {
        assert_eq!(Units::Imperial.temperature(100.0), 212.0);
        assert_eq!(Units::Imperial.temperature(-40.0), -40.0);
        assert_eq!(Units::Imperial.speed(16.09344), 10.0);
        assert_eq!(Units::Metric.temperature(21.04), 21.0);
        assert_eq!(Units::parse("IMPERIAL"), Some(Units::Imperial));
        assert_eq!(Units::parse("kelvin"), None);
    }

    #[test]
    fn local_time_follows_longitude() {
        let tokyo = find("tokyo").unwrap();
        let t = clock::parse_utc("2025-07-04T20:00:00Z").unwrap();
        let (day, hour) = local_time(tokyo, t);
        assert_eq!(clock::Date(day).to_string(), "2025-07-05");
        assert!((hour - 5.31).abs() < 0.01, "{hour}");
        assert_eq!(compass(0.0), "N");
        assert_eq!(compass(359.0), "N");
        assert_eq!(compass(225.0), "SW");
    }
}
