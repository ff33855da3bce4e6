use std::sync::Mutex;

use backworks_plugin_sdk::*;

#[derive(Default)]
pub struct WeatherPlugin {
    api_key: Mutex<Option<String>>,
}

#[async_trait]
impl BackworksPlugin for WeatherPlugin {
    fn name(&self) -> &str {
        "seed-weather"
    }
    fn version(&self) -> &str {
        "0.1.0"
    }
    fn description(&self) -> &str {
        "Weather information plugin"
    }

    async fn initialize(&self, config: &Value) -> PluginResult<()> {
        let api_key = config["api_key"]
            .as_str()
            .ok_or_else(|| PluginError::ConfigurationError("api_key is required".to_string()))?;
        *self.api_key.lock().unwrap() = Some(api_key.to_string());
        log_info!("seed weather plugin initialised");
        Ok(())
    }

    async fn shutdown(&self) -> PluginResult<()> {
        Ok(())
    }

    async fn health_check(&self) -> PluginResult<PluginHealth> {
        let key_len = self.api_key.lock().unwrap().as_ref().map_or(0, |k| k.len());
        Ok(PluginHealth::healthy("Weather service is running")
            .with_detail("api_key_length", key_len))
    }

    async fn process_endpoint_data(
        &self,
        endpoint: &str,
        method: &str,
        _data: &str,
    ) -> PluginResult<Option<String>> {
        match (endpoint, method) {
            ("/weather", "GET") => Ok(Some(json!({"temperature": 25, "humidity": 60}).to_string())),
            _ => Ok(None),
        }
    }
}

export_plugin!(WeatherPlugin);
