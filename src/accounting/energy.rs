//! Energy estimate (paper §V, Figs. 7–9): compute energy = device power × measured compute
//! seconds; communication energy = link power × transfer time, transfer time = bits ÷
//! bandwidth. Constants come from the config (`[energy]`), with documented defaults.

use crate::config::EnergyConfig;

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Energy {
    pub device_power_w: f64,
    pub link_power_w: f64,
    pub bandwidth_bps: f64,
}

impl From<&EnergyConfig> for Energy {
    fn from(c: &EnergyConfig) -> Self {
        Self { device_power_w: c.device_power_w, link_power_w: c.link_power_w, bandwidth_bps: c.bandwidth_mbps * 1e6 }
    }
}

impl Energy {
    pub fn compute_joules(&self, seconds: f64) -> f64 {
        self.device_power_w * seconds
    }

    pub fn comm_joules(&self, bytes: u64) -> f64 {
        self.link_power_w * (bytes as f64 * 8.0) / self.bandwidth_bps
    }
}
