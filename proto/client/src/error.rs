use std::{error::Error as StdError, fmt};

/// Why a channel could not be made. Its message carries the whole cause (transport
/// errors say little on their own), so it has no separate source.
#[derive(Debug)]
pub enum ConnectError {
    /// The URL list was empty.
    NoUrl,
    /// A URL is malformed, or its server could not be reached.
    Endpoint {
        url: String,
        cause: tonic::transport::Error,
    },
    /// The bearer token cannot be sent as a header value.
    Token,
    /// A balanced channel cannot be made of these URLs.
    Balance(String),
}

impl fmt::Display for ConnectError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::NoUrl => f.write_str("no server URL given"),
            Self::Endpoint { url, cause } => {
                write!(f, "cannot connect to {url}: {cause}")?;
                let mut next = cause.source();
                while let Some(e) = next {
                    write!(f, ": {e}")?;
                    next = e.source();
                }
                Ok(())
            }
            Self::Token => f.write_str("the bearer token is not a valid header value"),
            Self::Balance(why) => f.write_str(why),
        }
    }
}

impl StdError for ConnectError {}
