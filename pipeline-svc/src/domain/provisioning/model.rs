//! What provisioning creates — graphs, their schema records, subscriptions and credit
//! pools — with the state machines that keep their statuses moving forward, the plans and
//! the catalog of shared repositories.

use sha2::{Digest, Sha256};
use uuid::Uuid;

use super::SchemaSpec;
use crate::domain::Micros;

string_enum!(
    /// The plans a subscription may have; each grants a fixed credit pool.
    Plan {
        Free = "free",
        Pro = "pro",
        Enterprise = "enterprise",
    }
);

impl Plan {
    /// Credits the plan's pool starts with.
    pub fn credits(self) -> i64 {
        match self {
            Self::Free => 1_000,
            Self::Pro => 100_000,
            Self::Enterprise => 1_000_000,
        }
    }

    pub fn names() -> String {
        Self::ALL
            .iter()
            .map(|p| p.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    }
}

string_enum!(
    /// `PENDING → PROVISIONING → ACTIVE → CANCELLED`; PENDING and PROVISIONING may end
    /// FAILED or CANCELLED, and ACTIVE may end FAILED when a failed provisioning undoes its
    /// activation.
    SubscriptionStatus {
        Pending = "PENDING",
        Provisioning = "PROVISIONING",
        Active = "ACTIVE",
        Failed = "FAILED",
        Cancelled = "CANCELLED",
    }
);

impl SubscriptionStatus {
    pub fn is_terminal(self) -> bool {
        matches!(self, Self::Failed | Self::Cancelled)
    }

    /// Whether a write may move a subscription from `self` to `next` (staying put is not
    /// a move; callers treat it as done).
    pub fn can_move_to(self, next: Self) -> bool {
        use SubscriptionStatus::*;
        matches!(
            (self, next),
            (Pending, Provisioning | Failed | Cancelled)
                | (Provisioning, Active | Failed | Cancelled)
                | (Active, Failed | Cancelled)
        )
    }
}

string_enum!(
    /// `PROVISIONING → ACTIVE → DEPROVISIONING`; a deprovisioning that fails before it
    /// removed anything goes back to ACTIVE. Failed provisioning deletes the graph.
    GraphStatus {
        Provisioning = "PROVISIONING",
        Active = "ACTIVE",
        Deprovisioning = "DEPROVISIONING",
    }
);

impl GraphStatus {
    pub fn can_move_to(self, next: Self) -> bool {
        use GraphStatus::*;
        matches!(
            (self, next),
            (Provisioning, Active) | (Active, Deprovisioning) | (Deprovisioning, Active)
        )
    }
}

string_enum!(
    GraphKind {
        User = "user",
        Repository = "repository",
    }
);

/// The owner of shared repository graphs.
pub const REPOSITORY_OWNER: &str = "system";

/// A shared read-only graph that users get access to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Repository {
    pub name: &'static str,
    pub extensions: &'static [&'static str],
}

pub const REPOSITORIES: &[Repository] = &[
    Repository {
        name: "sec",
        extensions: &["knowledge"],
    },
    Repository {
        name: "retail",
        extensions: &["commerce", "social"],
    },
];

impl Repository {
    pub fn find(name: &str) -> Option<Repository> {
        REPOSITORIES.iter().find(|r| r.name == name).copied()
    }

    pub fn names() -> String {
        REPOSITORIES
            .iter()
            .map(|r| r.name)
            .collect::<Vec<_>>()
            .join(", ")
    }

    /// One graph per repository, whoever asks first: its id derives from the name.
    pub fn graph_id(self) -> Uuid {
        let digest = Sha256::digest(format!("capstan repository graph {}", self.name));
        let mut bytes = [0u8; 16];
        bytes.copy_from_slice(&digest[..16]);
        uuid::Builder::from_random_bytes(bytes).into_uuid()
    }

    pub fn spec(self) -> SchemaSpec {
        SchemaSpec::Extensions {
            extensions: self.extensions.iter().map(|e| e.to_string()).collect(),
        }
    }
}

/// A graph's persisted schema: what it was provisioned with and the DDL that made it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SchemaRecord {
    pub graph_id: Uuid,
    pub schema_type: String,
    pub name: String,
    pub version: String,
    pub ddl: Vec<String>,
    pub spec_json: String,
    pub tables: Vec<String>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Graph {
    pub id: Uuid,
    pub owner: String,
    pub name: String,
    pub status: GraphStatus,
    pub kind: GraphKind,
    pub repository: Option<String>,
    /// `sqlite` or `postgres`.
    pub backend: String,
    pub location: String,
    /// The operation that created it.
    pub operation_id: Uuid,
    pub create_time: Micros,
    pub update_time: Micros,
    /// ACTIVE and its provisioning operation SUCCEEDED: safe to use and to remove.
    pub ready: bool,
    pub schema: Option<SchemaRecord>,
}

impl Graph {
    /// Changes whenever the graph does.
    pub fn etag(&self) -> String {
        let digest = Sha256::digest(format!(
            "{}:{}:{}",
            self.id,
            self.status.as_str(),
            self.update_time
        ));
        hex::encode(&digest[..8])
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CreditPool {
    pub id: Uuid,
    pub subscription_id: Uuid,
    pub graph_id: Uuid,
    pub user_id: String,
    pub plan: Plan,
    pub allocated: i64,
    pub remaining: i64,
    pub create_time: Micros,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Subscription {
    pub id: Uuid,
    pub user_id: String,
    pub plan: Plan,
    pub status: SubscriptionStatus,
    pub reason: String,
    pub graph_id: Uuid,
    pub checkout_id: Option<String>,
    pub repository: Option<String>,
    pub operation_id: Uuid,
    pub create_time: Micros,
    pub update_time: Micros,
    pub pool: Option<CreditPool>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn rank(s: SubscriptionStatus) -> u8 {
        match s {
            SubscriptionStatus::Pending => 0,
            SubscriptionStatus::Provisioning => 1,
            SubscriptionStatus::Active => 2,
            _ => 3,
        }
    }

    proptest! {
        /// Allowed moves only go forward, and nothing leaves FAILED or CANCELLED.
        #[test]
        fn subscriptions_move_forward(moves in proptest::collection::vec(0usize..5, 0..20)) {
            let mut s = SubscriptionStatus::Pending;
            for m in moves {
                let next = SubscriptionStatus::ALL[m];
                if s.can_move_to(next) {
                    prop_assert!(!s.is_terminal());
                    prop_assert!(rank(next) > rank(s));
                    s = next;
                }
            }
        }

        /// A graph never goes back to PROVISIONING.
        #[test]
        fn graphs_never_return_to_provisioning(moves in proptest::collection::vec(0usize..3, 0..20)) {
            let mut s = GraphStatus::Provisioning;
            let mut left = false;
            for m in moves {
                let next = GraphStatus::ALL[m];
                if s.can_move_to(next) {
                    prop_assert!(next != GraphStatus::Provisioning);
                    s = next;
                    left = true;
                }
            }
            prop_assert!(!left || s != GraphStatus::Provisioning);
        }
    }

    #[test]
    fn plans_and_repositories() {
        for p in Plan::ALL {
            assert_eq!(Plan::parse(p.as_str()), Some(*p));
            assert!(p.credits() > 0);
        }
        assert_eq!(Plan::parse("gold"), None);
        for r in REPOSITORIES {
            assert!(r.spec().validate().is_ok(), "{}", r.name);
            assert_eq!(r.graph_id(), r.graph_id());
        }
        assert_ne!(REPOSITORIES[0].graph_id(), REPOSITORIES[1].graph_id());
    }
}
