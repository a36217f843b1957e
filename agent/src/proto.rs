//! The sealed wire protocol: every control message, encode/decode, sealing (being built).
