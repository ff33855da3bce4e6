use std::time::{Duration, Instant};

use backworks_plugin_sdk::*;

#[derive(Default)]
pub struct Probe;

#[async_trait]
impl BackworksPlugin for Probe {
    fn name(&self) -> &str {
        "probe"
    }
    fn version(&self) -> &str {
        "0.1.0"
    }
    fn hooks(&self) -> Hooks {
        Hooks::ALL
    }

    async fn initialize(&self, config: &Value) -> PluginResult<()> {
        if config["panic"] == true {
            panic!("refusing to start: {}", "asked to panic");
        }
        Ok(())
    }

    async fn handle(&self, req: &Request) -> PluginResult<Response> {
        match req.path.as_str() {
            "/panic" => panic!("the weather station caught fire"),
            "/wait-for-cancel" => {
                let deadline = Instant::now() + Duration::from_secs(10);
                while Instant::now() < deadline {
                    req.check_cancelled()?;
                    std::thread::sleep(Duration::from_millis(1));
                }
                Ok(Response::error(504, "never cancelled"))
            }
            _ => Ok(Response::text(200, "still standing")),
        }
    }

    async fn on_request(&self, req: &Request) -> PluginResult<Option<Response>> {
        Ok(match req.header("authorization") {
            Some(_) => None,
            None => Some(
                Response::error(401, "missing credentials")
                    .with_header("www-authenticate", "Bearer"),
            ),
        })
    }

    async fn on_response(
        &self,
        _req: &Request,
        upstream: &Response,
    ) -> PluginResult<Option<Response>> {
        Ok(Some(upstream.clone().with_header("x-checked-by", "probe")))
    }
}

export_plugin!(Probe);
