//! A refusal: why a request or a step cannot be done, with the API error
//! code it is answered with. Shared by the API and the drivers, which take
//! nodes on the API's behalf.

use nodemaint_proto::model::NodeStatus;
use nodemaint_proto::pb::{self, error::Code};

/// A refusal: code and message, turned into an `ApiReply` error.
#[derive(Debug)]
pub struct Refusal(pub Code, pub String);

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.0.as_str_name(), self.1)
    }
}

/// Status as operators read it: ENABLED, MAINTENANCE, …
pub fn status_word(s: NodeStatus) -> String {
    format!("{s:?}").to_uppercase()
}

impl From<Refusal> for pb::ApiReply {
    fn from(r: Refusal) -> Self {
        pb::ApiReply::error(r.0, r.1)
    }
}
