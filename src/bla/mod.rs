pub mod appearances;
