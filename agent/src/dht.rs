//! The Kademlia DHT as a sans-I/O state machine (being built).
