//! `surge-sandbox`: placeholder, replaced by the sandbox work.
