//! Counts its visits in Spin's SQLite database (`spin:sqlite@3.1.0`).

use spin_sdk::http::{IntoResponse, Request};
use spin_sdk::http_service;
use spin_sdk::sqlite::Connection;

#[http_service]
async fn handle(_req: Request) -> anyhow::Result<impl IntoResponse> {
    let db = Connection::open_default().await?;
    db.execute("CREATE TABLE IF NOT EXISTS visits (n INTEGER)", [])
        .await?;
    Ok("counted\n")
}
