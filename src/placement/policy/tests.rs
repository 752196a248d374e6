//! Unit tests of the placement core.
use super::*;
