//! Connecting an Aircall company: check the credentials, register the webhook, store the
//! connection with its token encrypted and its webhook token fingerprinted. A failure half-way
//! leaves nothing behind: no stored credentials, no orphan webhook on Aircall.

use secrecy::ExposeSecret;
use tracing::{info, warn};
use url::Url;

use super::{ConnectionId, ConnectionRecord, ConnectionStatus, ConnectionStore};
use crate::aircall::models::{HANDLED_EVENTS, WebhookSpec};
use crate::aircall::{AircallClient, AircallError};
use crate::crypto::Keys;

/// What connecting needs.
pub struct ConnectRequest<'a> {
    pub id: ConnectionId,
    /// A client built with the new connection's credentials.
    pub client: &'a AircallClient,
    pub api_id: &'a str,
    pub api_token: &'a secrecy::SecretString,
    /// Where Aircall reaches this service.
    pub public_url: &'a Url,
    pub store: &'a ConnectionStore,
    pub keys: &'a Keys,
    /// Status of the new connection (waiting for users until a paying-users list exists).
    pub status: ConnectionStatus,
    pub now_ms: i64,
}

/// Why a connection could not be made.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error("a connection with this id already exists")]
    AlreadyExists,
    #[error(
        "Aircall refused these credentials: check that the API ID and token are the ones shown \
         when the key was created, that the key was not revoked, and that an Aircall admin created it"
    )]
    InvalidCredentials,
    #[error("Aircall could not be reached")]
    AircallUnavailable(#[source] AircallError),
    #[error("Aircall refused the webhook registration")]
    WebhookRefused(#[source] AircallError),
    #[error("the connection could not be stored")]
    Store(#[source] redis::RedisError),
}

/// The webhook URL of a connection.
pub fn webhook_url(public_url: &Url, id: &ConnectionId) -> String {
    format!(
        "{}/webhooks/aircall/{id}",
        public_url.as_str().trim_end_matches('/')
    )
}

/// Connects an Aircall company; see the module documentation for the guarantees.
pub async fn connect(request: ConnectRequest<'_>) -> Result<ConnectionRecord, ConnectError> {
    let ConnectRequest {
        id,
        client,
        api_id,
        api_token,
        public_url,
        store,
        keys,
        status,
        now_ms,
    } = request;
    if store.get(&id).await.map_err(ConnectError::Store)?.is_some() {
        return Err(ConnectError::AlreadyExists);
    }
    client.ping().await.map_err(|e| match e {
        AircallError::InvalidCredentials { .. } => ConnectError::InvalidCredentials,
        other => ConnectError::AircallUnavailable(other),
    })?;
    let spec = WebhookSpec {
        custom_name: Some(format!("aircall-ingest {id}")),
        url: Some(webhook_url(public_url, &id)),
        events: HANDLED_EVENTS.iter().map(|e| e.to_string()).collect(),
        active: None,
    };
    let webhook = client.create_webhook(&spec).await.map_err(|e| match e {
        AircallError::InvalidCredentials { .. } => ConnectError::InvalidCredentials,
        e if e.is_transient() => ConnectError::AircallUnavailable(e),
        e => ConnectError::WebhookRefused(e),
    })?;
    let Some(token) = webhook.token.as_ref() else {
        remove_webhook(client, &webhook.webhook_id).await;
        return Err(ConnectError::WebhookRefused(AircallError::Malformed {
            endpoint: "create_webhook",
            reason: "the webhook came back without a token".into(),
        }));
    };
    let record = ConnectionRecord {
        api_token_sealed: keys.encrypt(api_token, id.as_str()),
        webhook_token_fingerprint: keys.fingerprint(token.expose_secret()),
        id,
        api_id: api_id.to_string(),
        webhook_id: webhook.webhook_id.clone(),
        status,
        created_at_ms: now_ms,
    };
    match store.create(&record).await {
        Ok(true) => {
            info!(connection = %record.id, webhook = %record.webhook_id, "connected an Aircall company");
            Ok(record)
        }
        Ok(false) => {
            remove_webhook(client, &webhook.webhook_id).await;
            Err(ConnectError::AlreadyExists)
        }
        Err(e) => {
            remove_webhook(client, &webhook.webhook_id).await;
            Err(ConnectError::Store(e))
        }
    }
}

/// Rolls back a webhook registration. A failure is logged: the orphan receives events for an
/// unknown connection (answered 404) until someone removes it.
async fn remove_webhook(client: &AircallClient, webhook_id: &str) {
    match client.delete_webhook(webhook_id).await {
        Ok(()) | Err(AircallError::NotFound) => {}
        Err(e) => {
            warn!(error = %e, webhook = webhook_id, "cannot remove the webhook of a failed connection")
        }
    }
}
