//! `surge-filter`: placeholder, replaced by the filter work.
