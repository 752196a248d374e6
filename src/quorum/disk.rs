//! The durable consensus log in the state directory. (Stub: being written.)
