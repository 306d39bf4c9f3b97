//! The HTTP/1.1 layer: parsing and encoding over byte slices. No I/O, no clock.

pub mod body;
pub mod range;
pub mod request;
pub mod response;
