//! The WebSocket server end to end, with a raw client: every test runs its own
//! server (and engine) on 127.0.0.1:0.

mod bad_input;
mod cluster;
mod edge;
mod fanout;
mod hooks;
mod longpoll;
mod process;
mod protocol;
mod util;
