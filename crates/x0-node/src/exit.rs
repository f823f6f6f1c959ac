//! Process exit codes (sysexits.h) and the error that carries one.

use x0_identity::StoreError;

/// Command line or configuration error (EX_USAGE).
pub const USAGE: u8 = 64;
/// Bad input data, e.g. a malformed token or a damaged database (EX_DATAERR).
pub const DATA: u8 = 65;
/// A required state directory or file is missing (EX_NOINPUT).
pub const NO_INPUT: u8 = 66;
/// A service this command needs is not there, e.g. no daemon answers (EX_UNAVAILABLE).
pub const UNAVAILABLE: u8 = 69;
/// Permissions too open (EX_NOPERM).
pub const NO_PERM: u8 = 77;
/// Anything else.
pub const FAILURE: u8 = 1;

/// A failed command: what to print and how to exit.
#[derive(Debug)]
pub struct Exit {
    /// The exit code (one of the constants above).
    pub code: u8,
    /// What to print.
    pub message: String,
}

impl Exit {
    /// An error ending with `code`.
    pub fn new(code: u8, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
        }
    }

    /// A usage or configuration error (64).
    pub fn usage(message: impl Into<String>) -> Self {
        Self::new(USAGE, message)
    }

    /// Any other failure (1).
    pub fn failure(message: impl Into<String>) -> Self {
        Self::new(FAILURE, message)
    }
}

impl From<StoreError> for Exit {
    fn from(e: StoreError) -> Self {
        let code = match &e {
            StoreError::InsecurePermissions { .. }
            | StoreError::WrongOwner { .. }
            | StoreError::NotRegularFile(..) => NO_PERM,
            StoreError::Missing(..) | StoreError::NoNodeIdentity(..) => NO_INPUT,
            StoreError::Corrupt { .. } | StoreError::NewerSchema { .. } => DATA,
            _ => FAILURE,
        };
        Self::new(code, e.to_string())
    }
}

/// What a command returns.
pub type CmdResult = Result<(), Exit>;
