pub mod deadline;
pub mod sip;
pub mod transaction;
