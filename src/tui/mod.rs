//! `busylamp tui`: the live dashboard on the control socket's `follow` stream. The model
//! ([`model`]) is plain data updated message by message; the views ([`view`]) are pure
//! functions of the model and the UI state drawing into a ratatui frame; the event loop
//! ([`app`]) only glues them to the socket and the terminal. It never opens the database.

pub mod app;
pub mod model;
pub mod view;
