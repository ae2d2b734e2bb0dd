//! Sealing small secrets under a master key (XChaCha20-Poly1305).
//!
//! Private keys of agents and, later, vault values are stored sealed: a random
//! 24-byte nonce followed by the ciphertext and tag. The master key comes from the
//! operator (environment or a key file); this module does no I/O.

use chacha20poly1305::aead::{Aead, KeyInit};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};

/// The 32-byte key that seals secrets at rest.
#[derive(Clone)]
pub struct MasterKey([u8; 32]);

impl std::fmt::Debug for MasterKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("MasterKey(…)")
    }
}

/// A sealed value could not be opened: wrong key or altered bytes.
#[derive(Debug, thiserror::Error)]
#[error("sealed value cannot be opened (wrong master key or corrupted data)")]
pub struct OpenError;

impl MasterKey {
    /// A fresh random key.
    pub fn generate() -> MasterKey {
        MasterKey(random_bytes())
    }

    /// The key from its 64-character hex form.
    pub fn from_hex(s: &str) -> Result<MasterKey, String> {
        let bytes = hex::decode(s.trim()).map_err(|e| format!("master key is not hex: {e}"))?;
        let arr: [u8; 32] = bytes
            .try_into()
            .map_err(|_| "master key must be 32 bytes (64 hex characters)".to_string())?;
        Ok(MasterKey(arr))
    }

    /// The key's hex form, for writing a key file.
    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }

    /// Seals `plain`; the result carries its own nonce.
    pub fn seal(&self, plain: &[u8]) -> Vec<u8> {
        let cipher = XChaCha20Poly1305::new((&self.0).into());
        let nonce: [u8; 24] = random_bytes();
        let mut out = nonce.to_vec();
        let ct = cipher
            .encrypt(XNonce::from_slice(&nonce), plain)
            .expect("XChaCha20-Poly1305 encryption of an in-memory buffer cannot fail");
        out.extend_from_slice(&ct);
        out
    }

    /// Opens what [`MasterKey::seal`] produced.
    pub fn open(&self, sealed: &[u8]) -> Result<Vec<u8>, OpenError> {
        if sealed.len() < 24 {
            return Err(OpenError);
        }
        let (nonce, ct) = sealed.split_at(24);
        XChaCha20Poly1305::new((&self.0).into())
            .decrypt(XNonce::from_slice(nonce), ct)
            .map_err(|_| OpenError)
    }
}

/// `N` bytes from the operating system's CSPRNG.
pub fn random_bytes<const N: usize>() -> [u8; N] {
    let mut b = [0u8; N];
    getrandom::fill(&mut b).expect("the operating system's random source is available");
    b
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sealed_values_open_only_with_the_same_key_and_unaltered_bytes() {
        let k = MasterKey::generate();
        let sealed = k.seal(b"private");
        assert_eq!(k.open(&sealed).unwrap(), b"private");
        assert!(MasterKey::generate().open(&sealed).is_err());
        let mut bad = sealed.clone();
        let last = bad.len() - 1;
        bad[last] ^= 1;
        assert!(k.open(&bad).is_err());
        assert_eq!(MasterKey::from_hex(&k.to_hex()).unwrap().0, k.0);
    }
}
