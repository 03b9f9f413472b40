//! Capstan's wire contract.
//!
//! Generated messages and services for every versioned package, the encoded descriptor
//! set (for server reflection), and the artifact-URI format both services share.

pub mod artifact_uri;

pub mod registry {
    pub mod v1 {
        tonic::include_proto!("capstan.registry.v1");
    }
}

pub mod pipeline {
    pub mod v1 {
        tonic::include_proto!("capstan.pipeline.v1");
    }
}

/// Every Capstan file descriptor (and its imports), for server reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/capstan_descriptor.bin"));
