//! The HTTP/1.1 layer: parsing and encoding over byte slices. No I/O, no clock.

pub mod accept;
pub mod body;
pub mod frame;
pub mod multipart;
#[cfg(test)]
mod props;
pub mod range;
pub mod request;
pub mod response;
