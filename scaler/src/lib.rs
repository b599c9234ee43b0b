//! `surge-scaler`: placeholder, replaced by the scaler work.
