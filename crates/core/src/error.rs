//! Errors that reach a user, and the one table of their codes.
//!
//! Every failure a caller can see carries an [`ErrorCode`]: a stable snake_case
//! `code`, an HTTP status and a title. The HTTP adapter renders it as RFC 9457
//! `application/problem+json`; the MCP adapter as a tool error with the same code.
//! Add a code here, never inline a status elsewhere.

use std::fmt;

/// Shorthand for results whose error reaches a user.
pub type Result<T, E = Error> = std::result::Result<T, E>;

macro_rules! codes {
    ($($variant:ident = $code:literal, $status:literal, $title:literal;)*) => {
        /// A stable problem code. The string form never changes once published.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub enum ErrorCode { $(#[doc = $title] $variant,)* }

        impl ErrorCode {
            /// Every code, in table order (for documentation and OpenAPI).
            pub const ALL: &'static [ErrorCode] = &[$(ErrorCode::$variant,)*];

            /// The stable snake_case name.
            pub fn as_str(self) -> &'static str { match self { $(ErrorCode::$variant => $code,)* } }

            /// The HTTP status this code is served with.
            pub fn status(self) -> u16 { match self { $(ErrorCode::$variant => $status,)* } }

            /// A short human title, the same for every occurrence of the code.
            pub fn title(self) -> &'static str { match self { $(ErrorCode::$variant => $title,)* } }

            /// Looks a code up by its stable name.
            pub fn parse(s: &str) -> Option<ErrorCode> { match s { $($code => Some(ErrorCode::$variant),)* _ => None } }
        }
    };
}

codes! {
    InvalidJson = "invalid_json", 400, "The request body is not valid JSON.";
    InvalidRequest = "invalid_request", 400, "The request does not match the syscall's schema.";
    InvalidIdempotencyKey = "invalid_idempotency_key", 400, "The Idempotency-Key header is empty, too long or not printable ASCII.";
    InvalidScope = "invalid_scope", 400, "A token scope names no syscall or is wider than the caller's own.";
    InvalidInput = "invalid_input", 400, "A task's input does not match its capability's input schema.";
    InvalidOutput = "invalid_output", 400, "A task's result does not match its capability's output schema.";
    Unauthenticated = "unauthenticated", 401, "No valid bearer token was presented.";
    TokenExpired = "token_expired", 401, "The bearer token has expired.";
    TokenRevoked = "token_revoked", 401, "The bearer token has been revoked.";
    Forbidden = "forbidden", 403, "The caller may not perform this syscall on this resource.";
    NotFound = "not_found", 404, "The resource does not exist.";
    RouteNotFound = "route_not_found", 404, "No syscall is served at this path.";
    MethodNotAllowed = "method_not_allowed", 405, "The path exists but not with this HTTP method.";
    Conflict = "conflict", 409, "The request conflicts with the current state.";
    AgentNameTaken = "agent_name_taken", 409, "Another live agent already has this name.";
    IdempotencyKeyReused = "idempotency_key_reused", 409, "The Idempotency-Key was already used with a different request.";
    IdempotencyKeyInFlight = "idempotency_key_in_flight", 409, "A call with this Idempotency-Key is still running; retry once it has finished to get its answer.";
    LeaseLost = "lease_lost", 409, "The caller no longer holds the task's lease (it expired or was never theirs).";
    TaskFinished = "task_finished", 409, "The task has already reached a terminal state.";
    EscalationResolved = "escalation_resolved", 409, "The escalation has already been resolved.";
    PayloadTooLarge = "payload_too_large", 413, "The request body exceeds the configured limit.";
    UnsupportedMediaType = "unsupported_media_type", 415, "The request body must be application/json.";
    NoCapableAgent = "no_capable_agent", 422, "No live agent declares the capability (submit with allow_unroutable to queue anyway).";
    // Tools layer (L4): the gateway's vault, connections and calls.
    InvalidArguments = "invalid_arguments", 400, "A tool call's arguments do not match the tool's input schema.";
    InvalidConnection = "invalid_connection", 400, "A connection's definition (command, URL, OpenAPI document, secret reference) is not usable.";
    UnknownSecret = "unknown_secret", 422, "A connection references a secret the vault does not hold.";
    SecretInUse = "secret_in_use", 409, "The secret is referenced by a connection; remove or change the connection first.";
    RateLimited = "rate_limited", 429, "Too many tool calls; retry after the time the error gives.";
    UpstreamFailed = "upstream_failed", 502, "The tool's upstream could not be reached or failed.";
    UpstreamRejected = "upstream_rejected", 502, "The tool's upstream refused the call with a protocol error.";
    UpstreamMalformed = "upstream_malformed", 502, "The tool's upstream answered with a malformed response.";
    UpstreamTooLarge = "upstream_too_large", 502, "The tool's upstream answered with more bytes than the gateway accepts.";
    CircuitOpen = "circuit_open", 503, "The connection's circuit breaker is open after repeated failures; retry later.";
    UpstreamTimeout = "upstream_timeout", 504, "The tool's upstream did not answer in time.";
    // --- compute layer (sandboxes) ---
    InvalidLimits = "invalid_limits", 400, "A sandbox limit is zero where it must not be, or above the allowed maximum.";
    InvalidCommand = "invalid_command", 400, "The sandbox command is empty or malformed.";
    InvalidPath = "invalid_path", 400, "A workspace path is absolute, contains '..', or goes through a symlink.";
    FileTooLarge = "file_too_large", 413, "A file is larger than a sandbox accepts.";
    WorkspaceFull = "workspace_full", 507, "The sandbox workspace has no room left (its quota is reached).";
    NetworkNotGranted = "network_not_granted", 403, "The sandbox asked for host-egress network, which the caller was not granted.";
    SandboxStopped = "sandbox_stopped", 409, "The sandbox is stopped; start it first.";
    UnknownTemplate = "unknown_template", 404, "No sandbox template has this name.";
    ExecFailed = "exec_failed", 422, "The sandboxed command could not be started (no such program, not executable); the detail gives the reason.";
    BackendUnavailable = "backend_unavailable", 501, "The sandbox backend asked for (`wasm`) is not built into this server.";
    SandboxUnavailable = "sandbox_unavailable", 503, "Sandboxes cannot be started on this host (namespaces, cgroups or the init program are missing).";
    // --- end compute layer ---
    // Memory layer (L3).
    InvalidFilter = "invalid_filter", 400, "A memory filter names an unknown field or operator, or is malformed.";
    MemoryTooLarge = "memory_too_large", 413, "The text to remember exceeds the memory layer's size limit.";
    HandoffDecided = "handoff_decided", 409, "The handoff has already been accepted or rejected.";
    ExtractorFailed = "extractor_failed", 502, "The configured fact extractor (a chat model) failed or answered unreadably.";
    EmbedderFailed = "embedder_failed", 502, "The configured embedding provider failed or answered unreadably.";
    Unavailable = "unavailable", 503, "The store is unreachable or the server is shutting down.";
    Internal = "internal", 500, "An unexpected error; the server log has details.";
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An error that reaches a user: a code plus a detail that says what to fix.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{code}: {detail}")]
pub struct Error {
    /// The stable problem code.
    pub code: ErrorCode,
    /// A sentence about this occurrence, naming the field or id at fault.
    pub detail: String,
    /// For refusals that pass (`rate_limited`, `circuit_open`): how long to wait
    /// before retrying, in ms. Adapters send it as `Retry-After`.
    pub retry_after_ms: Option<u64>,
}

impl Error {
    /// An error with `code` and `detail`.
    pub fn new(code: ErrorCode, detail: impl Into<String>) -> Self {
        Error {
            code,
            detail: detail.into(),
            retry_after_ms: None,
        }
    }

    /// The same error, telling the caller to retry after `ms` milliseconds.
    pub fn retry_after(mut self, ms: u64) -> Self {
        self.retry_after_ms = Some(ms);
        self
    }

    /// `not_found` for a resource `kind` with `id`.
    pub fn not_found(kind: &str, id: &str) -> Self {
        Error::new(ErrorCode::NotFound, format!("{kind} '{id}' does not exist"))
    }

    /// `invalid_request` naming a field.
    pub fn invalid(field: &str, why: impl fmt::Display) -> Self {
        Error::new(ErrorCode::InvalidRequest, format!("{field}: {why}"))
    }

    /// `forbidden` with a reason.
    pub fn forbidden(why: impl Into<String>) -> Self {
        Error::new(ErrorCode::Forbidden, why)
    }

    /// `internal`; the detail is logged by the caller and kept generic for users.
    pub fn internal(why: impl fmt::Display) -> Self {
        Error::new(ErrorCode::Internal, why.to_string())
    }

    /// The HTTP status of this error's code.
    pub fn status(&self) -> u16 {
        self.code.status()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_are_unique_snake_case_and_round_trip() {
        let mut seen = std::collections::HashSet::new();
        for &c in ErrorCode::ALL {
            assert!(seen.insert(c.as_str()), "duplicate code {c}");
            assert!(c.as_str().chars().all(|ch| ch.is_ascii_lowercase() || ch == '_'));
            assert_eq!(ErrorCode::parse(c.as_str()), Some(c));
            assert!((400..600).contains(&c.status()));
        }
    }
}
