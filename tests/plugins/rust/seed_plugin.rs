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

    // The seed's example verbatim: its placeholder body leaves the arguments unused.
    #[allow(unused_variables)]
    async fn process_endpoint_data(
        &self,
        endpoint: &str,
        method: &str,
        data: &str,
    ) -> PluginResult<Option<String>> {
        // Plugin logic here
        Ok(Some("Plugin response".to_string()))
    }
}

export_plugin!(MyPlugin);
