pub mod deadline;
pub mod sip;
