//! `#[async_trait]` on the shapes plugin code writes: the seed's plugin verbatim,
//! trait objects, and a trait of one's own with generics, lifetimes, patterns,
//! early returns and `?`.

use std::sync::Mutex;

use backworks_plugin_sdk::*;

#[derive(Default)]
pub struct MyPlugin;

#[async_trait]
impl BackworksPlugin for MyPlugin {
    fn name(&self) -> &str {
        "my-plugin"
    }
    fn version(&self) -> &str {
        "1.0.0"
    }
    fn description(&self) -> &str {
        "My awesome plugin"
    }

    async fn process_endpoint_data(
        &self,
        endpoint: &str,
        method: &str,
        data: &str,
    ) -> PluginResult<Option<String>> {
        // Plugin logic here
        let _ = (endpoint, method, data);
        Ok(Some("Plugin response".to_string()))
    }
}

#[derive(Default)]
struct Weather {
    api_key: Mutex<Option<String>>,
}

#[async_trait]
impl BackworksPlugin for Weather {
    fn name(&self) -> &str {
        "weather"
    }
    fn version(&self) -> &str {
        "0.1.0"
    }

    async fn initialize(&self, config: &Value) -> PluginResult<()> {
        let key = config["api_key"]
            .as_str()
            .ok_or_else(|| PluginError::config("api_key is required"))?;
        *self.api_key.lock().unwrap() = Some(key.to_owned());
        Ok(())
    }

    async fn process_endpoint_data(
        &self,
        endpoint: &str,
        method: &str,
        _data: &str,
    ) -> PluginResult<Option<String>> {
        if (endpoint, method) != ("/weather", "GET") {
            return Ok(None);
        }
        Ok(Some(json!({"temperature": 25, "humidity": 60}).to_string()))
    }
}

#[test]
fn the_seed_plugin_answers_through_the_default_handle() {
    let resp = block_on(MyPlugin.handle(&Request::new("GET", "/anything"))).unwrap();
    assert_eq!(resp.status, 200);
    assert_eq!(resp.body_str(), Some("Plugin response"));
    assert_eq!(
        resp.content_type, TEXT_PLAIN,
        "a body that is not JSON is sent as text"
    );
    assert_eq!(MyPlugin.description(), "My awesome plugin");
}

#[test]
fn process_endpoint_data_none_is_a_json_404_and_json_text_is_json() {
    let plugin = Weather::default();
    assert!(block_on(plugin.initialize(&json!({}))).is_err());
    block_on(plugin.initialize(&json!({"api_key": "k"}))).unwrap();
    assert_eq!(plugin.api_key.lock().unwrap().as_deref(), Some("k"));

    let hit = block_on(plugin.handle(&Request::new("GET", "/weather"))).unwrap();
    assert_eq!((hit.status, hit.content_type.as_str()), (200, ""));
    assert_eq!(
        hit.body_json().unwrap(),
        json!({"temperature": 25, "humidity": 60})
    );

    let miss = block_on(plugin.handle(&Request::new("POST", "/weather"))).unwrap();
    assert_eq!(miss.status, 404);
    assert_eq!(
        miss.body_json().unwrap()["error"],
        "weather does not handle POST /weather"
    );

    // The route pattern, when the host gives one, is what the seed API sees.
    let routed = Request::new("GET", "/weather/oslo").with_endpoint("/weather");
    assert_eq!(block_on(plugin.handle(&routed)).unwrap().status, 200);
}

#[test]
fn plugins_work_as_trait_objects() {
    let plugins: Vec<Box<dyn BackworksPlugin>> =
        vec![Box::new(MyPlugin), Box::new(Weather::default())];
    let names: Vec<&str> = plugins.iter().map(|p| p.name()).collect();
    assert_eq!(names, ["my-plugin", "weather"]);
    let health = block_on(plugins[0].health_check()).unwrap();
    assert_eq!(health.status, HealthStatus::Healthy);
    assert!(plugins[1].flags().contains(PluginFlags::THREAD_SAFE));
}

/// A trait of one's own, with the shapes the rewrite has to get right.
#[async_trait]
trait Store: Send + Sync {
    async fn get(&self, key: &str) -> Option<String>;
    async fn put(&self, key: String, value: &str);
    async fn first<'a, T: AsRef<str> + Send + Sync>(&self, keys: &'a [T]) -> Option<&'a str> {
        for key in keys {
            if self.get(key.as_ref()).await.is_some() {
                return Some(key.as_ref());
            }
        }
        None
    }
    async fn parse(&self, key: &str) -> PluginResult<i64> {
        let text = self
            .get(key)
            .await
            .ok_or_else(|| PluginError::processing(format!("no {key}")))?;
        let value: Value = text.parse()?;
        value
            .as_i64()
            .ok_or_else(|| PluginError::processing("not an integer"))
    }
    async fn touch(&self, (a, b): (&str, &str), mut count: u32) {
        count += 1;
        self.put(format!("{a}{b}"), &count.to_string()).await;
    }
    async fn put_all<I>(&self, items: I) -> usize
    where
        I: IntoIterator<Item = (String, String)> + Send,
        I::IntoIter: Send,
    {
        let mut n = 0;
        for (k, v) in items {
            self.put(k, &v).await;
            n += 1;
        }
        n
    }
}

/// Generic impls and a `where` clause on the impl block.
struct Prefixed<S>(S, &'static str);

#[async_trait]
impl<S> Store for Prefixed<S>
where
    S: Store,
{
    async fn get(&self, key: &str) -> Option<String> {
        self.0.get(&format!("{}{key}", self.1)).await
    }

    async fn put(&self, key: String, value: &str) {
        self.0.put(format!("{}{key}", self.1), value).await
    }
}

#[derive(Default)]
struct MemStore(Mutex<Vec<(String, String)>>);

#[async_trait]
impl Store for MemStore {
    async fn get(&self, key: &str) -> Option<String> {
        self.0
            .lock()
            .unwrap()
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.clone())
    }

    async fn put(&self, key: String, value: &str) {
        self.0.lock().unwrap().push((key, value.to_owned()));
    }
}

#[test]
fn own_traits_with_generics_lifetimes_and_patterns() {
    let store = MemStore::default();
    block_on(store.put("n".into(), "42"));
    block_on(store.touch(("a", "b"), 1));
    assert_eq!(block_on(store.get("ab")).as_deref(), Some("2"));
    let keys = ["x".to_string(), "n".to_string()];
    assert_eq!(block_on(store.first(&keys)), Some("n"));
    assert_eq!(block_on(store.parse("n")), Ok(42));
    assert_eq!(
        block_on(store.parse("zz")),
        Err(PluginError::processing("no zz"))
    );
    assert_eq!(
        block_on(store.put_all(vec![("p".to_owned(), "1".to_owned())])),
        1
    );

    let prefixed = Prefixed(store, "ns:");
    block_on(prefixed.put("k".into(), "v"));
    assert_eq!(block_on(prefixed.get("k")).as_deref(), Some("v"));
    assert_eq!(block_on(prefixed.0.get("ns:k")).as_deref(), Some("v"));
}

/// `?Send` futures may hold non-Send values across `.await`.
#[async_trait(?Send)]
trait Local {
    async fn count(&self) -> usize;
}

struct Counter;

#[async_trait(?Send)]
impl Local for Counter {
    async fn count(&self) -> usize {
        let rc = std::rc::Rc::new(3);
        std::future::ready(()).await;
        *rc
    }
}

#[test]
fn not_send_futures_with_the_question_send_argument() {
    assert_eq!(block_on(Counter.count()), 3);
}
