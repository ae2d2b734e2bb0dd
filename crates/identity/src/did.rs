//! `did:key` for Ed25519 public keys.
//!
//! A `did:key` is `did:key:z` followed by the base58btc encoding of the multicodec
//! prefix for Ed25519 public keys (`0xed 0x01`) and the 32 key bytes.

const ED25519_PUB: [u8; 2] = [0xed, 0x01];

/// The `did:key` of an Ed25519 public key.
pub fn did_key(public: &[u8; 32]) -> String {
    let mut bytes = ED25519_PUB.to_vec();
    bytes.extend_from_slice(public);
    format!("did:key:z{}", bs58::encode(bytes).into_string())
}

/// The Ed25519 public key inside a `did:key`, if it is one.
pub fn public_key_of(did: &str) -> Option<[u8; 32]> {
    let enc = did.strip_prefix("did:key:z")?;
    let bytes = bs58::decode(enc).into_vec().ok()?;
    let key = bytes.strip_prefix(&ED25519_PUB)?;
    key.try_into().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn did_key_matches_the_spec_test_vector_and_round_trips() {
        // Test vector from the did:key method specification (Ed25519, z6Mk… prefix).
        let did = "did:key:z6MkiTBz1ymuepAQ4HEHYSF1H8quG5GLVVQR3djdX3mDooWp";
        let key = public_key_of(did).expect("a valid Ed25519 did:key");
        assert_eq!(did_key(&key), did);
        assert!(public_key_of("did:key:zabc").is_none());
    }
}
