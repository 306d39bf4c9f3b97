//! Integration tests: the real `halley` binary, driven over TCP.

mod support;

mod badinput;
mod batch;
mod hardening;
mod http1;
mod longpoll;
mod rest;
mod scale;
mod stream;
