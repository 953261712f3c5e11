//! A connection's life: connect an Aircall company, rotate its credentials, disconnect it.
//!
//! Each step checks with Aircall before it changes anything here, and undoes what it did on
//! Aircall when it cannot finish here, so a failure half-way leaves things as they were: no
//! stored credentials and no orphan webhook after a failed connect, the old credentials still
//! in use after a refused rotation, nothing erased after a disconnect Aircall could not answer.

use secrecy::{ExposeSecret, SecretString};
use tracing::{info, warn};
use url::Url;

use super::{
    ConnectionId, ConnectionRecord, ConnectionStatus, ConnectionStore, CredentialsReplaced,
    OutcomeStore,
};
use crate::aircall::models::{HANDLED_EVENTS, Webhook, WebhookSpec};
use crate::aircall::{AircallClient, AircallError};
use crate::crypto::Keys;
use crate::import::rules::PayingUsers;
use crate::reconcile::StateStore;

/// What connecting needs.
pub struct ConnectRequest<'a> {
    pub id: ConnectionId,
    /// A client built with the new connection's credentials.
    pub client: &'a AircallClient,
    pub api_id: &'a str,
    pub api_token: &'a SecretString,
    /// The paying users; none leaves the connection `waiting_for_users`.
    pub users: &'a PayingUsers,
    /// Where Aircall reaches this service.
    pub public_url: &'a Url,
    pub store: &'a ConnectionStore,
    /// What an earlier connection of the same id may have left (its decisions about calls not
    /// imported, its reconciliation state) is cleared, so a connection starts afresh.
    pub outcomes: &'a OutcomeStore,
    pub state: &'a StateStore,
    pub keys: &'a Keys,
    pub now_ms: i64,
}

/// Why a connection could not be made, or its credentials not replaced.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error("a connection with this id already exists")]
    AlreadyExists,
    #[error("no connection with this id")]
    UnknownConnection,
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
        users,
        public_url,
        store,
        outcomes,
        state,
        keys,
        now_ms,
    } = request;
    if store.get(&id).await.map_err(ConnectError::Store)?.is_some() {
        return Err(ConnectError::AlreadyExists);
    }
    check_credentials(client).await?;
    // The id is free: whatever an earlier connection of it left behind goes (a disconnect
    // that could not finish erasing, a worker recording a decision just after it).
    erase_state(state, outcomes, &id)
        .await
        .map_err(ConnectError::Store)?;
    let (webhook, token) = register_webhook(client, public_url, &id).await?;
    let record = ConnectionRecord {
        api_token_sealed: keys.encrypt(api_token, id.as_str()),
        webhook_token_fingerprint: keys.fingerprint(token.expose_secret()),
        id,
        api_id: api_id.to_string(),
        webhook_id: webhook.webhook_id.clone(),
        status: if users.is_empty() {
            ConnectionStatus::WaitingForUsers
        } else {
            ConnectionStatus::Active
        },
        created_at_ms: now_ms,
    };
    match store.create(&record, users).await {
        Ok(true) => {
            // The records an earlier connection of the id left are this one's now: its passes
            // remove them once past the retention. Should this fail, the reconciler finds the
            // id connected when it looks at the records left, and does the same.
            if let Err(e) = outcomes.unretire(&record.id).await {
                warn!(connection = %record.id, error = %e, "cannot take the connection off the disconnected ones");
            }
            info!(connection = %record.id, webhook = %record.webhook_id, paying_users = users.len(), "connected an Aircall company");
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

/// What rotating credentials needs.
pub struct RotateRequest<'a> {
    pub id: &'a ConnectionId,
    /// A client with the connection's current credentials (to remove a webhook the new ones
    /// replaced), and one with the new credentials.
    pub old_client: Option<&'a AircallClient>,
    pub new_client: &'a AircallClient,
    pub api_id: &'a str,
    pub api_token: &'a SecretString,
    pub public_url: &'a Url,
    pub store: &'a ConnectionStore,
    pub keys: &'a Keys,
    pub now_ms: i64,
}

/// What a rotation did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rotated {
    /// The new credentials could not see the connection's webhook (they belong to another
    /// Aircall company, or the webhook was deleted), so a new one was registered.
    pub webhook_replaced: bool,
    /// The connection was `invalid_credentials` and works again.
    pub status_restored: bool,
}

/// Replaces a connection's credentials ("regenerate your API key"). The new pair is checked
/// first; when the connection's webhook is not visible with it, a webhook is registered under
/// it before anything is stored. A refused pair changes nothing.
pub async fn rotate_credentials(request: RotateRequest<'_>) -> Result<Rotated, ConnectError> {
    let RotateRequest {
        id,
        old_client,
        new_client,
        api_id,
        api_token,
        public_url,
        store,
        keys,
        now_ms,
    } = request;
    let Some(current) = store.get(id).await.map_err(ConnectError::Store)? else {
        return Err(ConnectError::UnknownConnection);
    };
    check_credentials(new_client).await?;
    let replacement = match new_client.get_webhook(&current.webhook_id).await {
        Ok(_) => None,
        Err(AircallError::NotFound) => Some(register_webhook(new_client, public_url, id).await?),
        Err(AircallError::InvalidCredentials { .. }) => {
            return Err(ConnectError::InvalidCredentials);
        }
        Err(e) => return Err(ConnectError::AircallUnavailable(e)),
    };
    let webhook = replacement.as_ref().map(|(webhook, token)| {
        (
            webhook.webhook_id.as_str(),
            keys.fingerprint(token.expose_secret()),
        )
    });
    let sealed = keys.encrypt(api_token, id.as_str());
    let replaced = store
        .replace_credentials(
            id,
            api_id,
            &sealed,
            webhook.as_ref().map(|(w, fp)| (*w, fp)),
            now_ms,
        )
        .await;
    let undo = || async {
        if let Some((webhook, _)) = &replacement {
            remove_webhook(new_client, &webhook.webhook_id).await;
        }
    };
    let status_restored = match replaced {
        Ok(CredentialsReplaced::Replaced) => false,
        Ok(CredentialsReplaced::StatusRestored) => true,
        Ok(CredentialsReplaced::UnknownConnection) => {
            undo().await;
            return Err(ConnectError::UnknownConnection);
        }
        Err(e) => {
            undo().await;
            return Err(ConnectError::Store(e));
        }
    };
    if replacement.is_some()
        && let Some(old) = old_client
    {
        // The old webhook would post events whose token no longer matches.
        remove_webhook(old, &current.webhook_id).await;
    }
    info!(connection = %id, webhook_replaced = replacement.is_some(), status_restored, "replaced the Aircall credentials");
    Ok(Rotated {
        webhook_replaced: replacement.is_some(),
        status_restored,
    })
}

/// What disconnecting needs.
pub struct DisconnectRequest<'a> {
    pub id: &'a ConnectionId,
    /// A client with the connection's credentials; `None` when they cannot be decrypted.
    pub client: Option<&'a AircallClient>,
    /// Erase the connection even when Aircall cannot be reached to remove its webhook.
    pub force: bool,
    pub store: &'a ConnectionStore,
    /// The records of imported calls stay (noted for removal once past the retention).
    pub outcomes: &'a OutcomeStore,
    pub state: &'a StateStore,
    pub now_ms: i64,
}

/// What became of the connection's webhook on Aircall.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WebhookRemoval {
    Removed,
    /// Aircall no longer had it.
    AlreadyGone,
    /// Aircall refuses the stored credentials (revoked): the webhook stays on Aircall until a
    /// person removes it; its deliveries are answered 404 meanwhile.
    CredentialsRefused,
    /// Aircall could not be reached and the disconnect was forced.
    Unreachable,
    /// The stored credentials could not be decrypted.
    CredentialsUnreadable,
}

impl WebhookRemoval {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Removed => "removed",
            Self::AlreadyGone => "already_gone",
            Self::CredentialsRefused => "credentials_refused",
            Self::Unreachable => "unreachable",
            Self::CredentialsUnreadable => "credentials_unreadable",
        }
    }
}

/// What a disconnect did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Disconnected {
    pub webhook: WebhookRemoval,
    /// Decisions erased (skipped, pending, failed calls); imported calls keep their record.
    /// `None` when Redis failed after the connection was removed: the rest is erased when the
    /// id is connected again.
    pub decisions_erased: Option<u64>,
}

/// Why a connection could not be disconnected.
#[derive(Debug, thiserror::Error)]
pub enum DisconnectError {
    #[error("no connection with this id")]
    UnknownConnection,
    #[error("Aircall could not be reached to remove the webhook; nothing was erased")]
    AircallUnavailable(#[source] AircallError),
    #[error("Redis failed")]
    Store(#[source] redis::RedisError),
}

/// Disconnects: removes the webhook on Aircall, then erases the credentials, the paying users,
/// the reconciliation state and the decisions about calls not imported. Imported calls keep
/// their files and their record, so connecting the same id again never imports (or announces)
/// them twice; the records are noted as a disconnected connection's, which the reconciler
/// removes once past the retention (the files stay).
pub async fn disconnect(request: DisconnectRequest<'_>) -> Result<Disconnected, DisconnectError> {
    let DisconnectRequest {
        id,
        client,
        force,
        store,
        outcomes,
        state,
        now_ms,
    } = request;
    let Some(current) = store.get(id).await.map_err(DisconnectError::Store)? else {
        return Err(DisconnectError::UnknownConnection);
    };
    let webhook = match client {
        None => WebhookRemoval::CredentialsUnreadable,
        Some(client) => match client.delete_webhook(&current.webhook_id).await {
            Ok(()) => WebhookRemoval::Removed,
            Err(AircallError::NotFound) => WebhookRemoval::AlreadyGone,
            Err(AircallError::InvalidCredentials { .. }) => WebhookRemoval::CredentialsRefused,
            Err(e) if force => {
                warn!(connection = %id, error = %e, "Aircall unreachable; disconnecting anyway, the webhook stays on Aircall");
                WebhookRemoval::Unreachable
            }
            Err(e) => return Err(DisconnectError::AircallUnavailable(e)),
        },
    };
    // The record first: from here on webhooks are answered 404, workers drop the connection's
    // jobs and the reconciler skips it. Deleting the reconciliation state also deletes its lock,
    // so a pass running now loses it and writes nothing more. What cannot be erased now is
    // erased when the id is connected again.
    store.delete(id).await.map_err(DisconnectError::Store)?;
    let erased = erase_state(state, outcomes, id).await;
    if let Err(e) = &erased {
        warn!(connection = %id, error = %e, "disconnected, but its state could not be erased yet");
    }
    // Whatever stays (the imports' records, or everything if the erasing failed) was decided by
    // now, and goes once past the retention, unless the id is connected again before.
    if let Err(e) = outcomes.retire(id, now_ms).await {
        warn!(connection = %id, error = %e, "disconnected, but its records are not noted for removal");
    }
    info!(connection = %id, webhook = webhook.as_str(), "disconnected an Aircall company");
    Ok(Disconnected {
        webhook,
        decisions_erased: erased.ok(),
    })
}

/// Erases a connection's reconciliation state (and lock) and its decisions about calls not
/// imported; returns how many decisions went.
async fn erase_state(
    state: &StateStore,
    outcomes: &OutcomeStore,
    id: &ConnectionId,
) -> Result<u64, redis::RedisError> {
    state.delete(id).await?;
    outcomes.forget_undecided(id).await
}

/// `GET /v1/ping` with the credentials: 403 means they are wrong, revoked or not an admin's.
async fn check_credentials(client: &AircallClient) -> Result<(), ConnectError> {
    client.ping().await.map_err(|e| match e {
        AircallError::InvalidCredentials { .. } => ConnectError::InvalidCredentials,
        other => ConnectError::AircallUnavailable(other),
    })
}

/// Registers the connection's webhook for exactly the handled events; returns it with its token.
async fn register_webhook(
    client: &AircallClient,
    public_url: &Url,
    id: &ConnectionId,
) -> Result<(Webhook, SecretString), ConnectError> {
    let spec = WebhookSpec {
        custom_name: Some(format!("aircall-ingest {id}")),
        url: Some(webhook_url(public_url, id)),
        events: HANDLED_EVENTS.iter().map(|e| e.to_string()).collect(),
        active: None,
    };
    let webhook = client.create_webhook(&spec).await.map_err(|e| match e {
        AircallError::InvalidCredentials { .. } => ConnectError::InvalidCredentials,
        e if e.is_transient() => ConnectError::AircallUnavailable(e),
        e => ConnectError::WebhookRefused(e),
    })?;
    match webhook.token.clone() {
        Some(token) => Ok((webhook, token)),
        None => {
            remove_webhook(client, &webhook.webhook_id).await;
            Err(ConnectError::WebhookRefused(AircallError::Malformed {
                endpoint: "create_webhook",
                reason: "the webhook came back without a token".into(),
            }))
        }
    }
}

/// Rolls back a webhook registration. A failure is logged: the orphan receives events for an
/// unknown connection (answered 404) until someone removes it.
async fn remove_webhook(client: &AircallClient, webhook_id: &str) {
    match client.delete_webhook(webhook_id).await {
        Ok(()) | Err(AircallError::NotFound) => {}
        Err(e) => {
            warn!(error = %e, webhook = webhook_id, "cannot remove a webhook this service registered")
        }
    }
}
