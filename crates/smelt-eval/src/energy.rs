//! Energy and carbon of a stretch of work.
//!
//! Measured where the machine allows it: the Linux powercap interface
//! (`/sys/class/powercap/intel-rapl:N/energy_uj`, which AMD Zen CPUs expose too) gives package
//! energy in microjoules; the counters wrap at `max_energy_range_uj`. Package energy covers the
//! whole socket, so other processes' work is counted too: measure on a quiet machine.
//!
//! Otherwise it is **estimated**, and always labelled so: `E = CPU seconds x W per busy core`,
//! where CPU seconds are this process's user + system time (`getrusage`) and the default power
//! per busy core is 4.4 W, an AMD EPYC 7763 (Zen 3, the CPU family of the machines smelt is
//! measured on) at its 280 W TDP shared by its 64 cores. Idle, DRAM and platform power are not
//! counted, so the estimate is a lower bound on the wall-plug energy.
//!
//! Carbon: `gCO2e = kWh x grid intensity`, default 480 gCO2e/kWh, the world average of 2023 in
//! Ember's Global Electricity Review 2024; set the local grid's figure with `--grid`.

use std::path::{Path, PathBuf};
use std::time::Instant;

use serde::{Deserialize, Serialize};

/// Default power per busy core, watts (see the module doc).
pub const DEFAULT_WATTS_PER_CORE: f64 = 4.4;
/// Default grid carbon intensity, gCO2e per kWh.
pub const DEFAULT_GRID_G_PER_KWH: f64 = 480.0;
/// Where the default grid intensity comes from.
pub const GRID_SOURCE: &str = "world average 2023, Ember Global Electricity Review 2024";
/// What the estimate assumes.
pub const ESTIMATE_ASSUMPTIONS: &str = "(default 4.4 W = AMD EPYC 7763 TDP 280 W / 64 cores); idle, DRAM and platform power not counted";

/// How energy is obtained and turned into carbon.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct PowerModel {
    pub watts_per_core: f64,
    pub grid_g_per_kwh: f64,
    /// The powercap root (default `/sys/class/powercap`).
    pub powercap: PathBuf,
}

impl Default for PowerModel {
    fn default() -> Self {
        PowerModel { watts_per_core: DEFAULT_WATTS_PER_CORE, grid_g_per_kwh: DEFAULT_GRID_G_PER_KWH, powercap: PathBuf::from("/sys/class/powercap") }
    }
}

/// Energy of one measured stretch.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct Energy {
    pub joules: f64,
    /// `"measured (RAPL package)"` or `"estimated"`.
    pub method: String,
    /// What the figure assumes, or why it could not be measured.
    pub note: String,
    pub cpu_seconds: f64,
    pub wall_seconds: f64,
    /// `joules` turned into grams of CO2-equivalent.
    pub co2e_g: f64,
}

/// Seconds of CPU (user + system) this process has used, all threads.
pub fn cpu_seconds() -> f64 {
    // SAFETY: getrusage fills the struct we own; a zeroed rusage is a valid value.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    if unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut ru) } != 0 {
        return 0.0;
    }
    let t = |tv: libc::timeval| tv.tv_sec as f64 + tv.tv_usec as f64 * 1e-6;
    t(ru.ru_utime) + t(ru.ru_stime)
}

/// Seconds of CPU the calling thread has used (`CLOCK_THREAD_CPUTIME_ID`): the cost of work done
/// on this thread alone while others run beside it.
pub fn thread_cpu_seconds() -> f64 {
    // SAFETY: clock_gettime fills the timespec we own.
    let mut ts: libc::timespec = unsafe { std::mem::zeroed() };
    if unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) } != 0 {
        return 0.0;
    }
    ts.tv_sec as f64 + ts.tv_nsec as f64 * 1e-9
}

/// A package-level powercap zone: its counter file and wrap range.
#[derive(Clone, Debug)]
struct Zone {
    energy: PathBuf,
    range: u64,
}

fn read_u64(p: &Path) -> Option<u64> {
    std::fs::read_to_string(p).ok()?.trim().parse().ok()
}

/// The package zones under `root` (`intel-rapl:N` without a sub-zone suffix), and why none is
/// usable when that is so.
fn package_zones(root: &Path) -> Result<Vec<Zone>, String> {
    let entries = std::fs::read_dir(root).map_err(|_| format!("no powercap interface at {}", root.display()))?;
    let mut zones = Vec::new();
    let mut unreadable = false;
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let is_package = name.strip_prefix("intel-rapl:").is_some_and(|rest| !rest.contains(':'));
        if !is_package {
            continue;
        }
        let energy = e.path().join("energy_uj");
        match read_u64(&energy) {
            Some(_) => zones.push(Zone { range: read_u64(&e.path().join("max_energy_range_uj")).unwrap_or(u64::MAX), energy }),
            None => unreadable = true,
        }
    }
    zones.sort_by(|a, b| a.energy.cmp(&b.energy));
    match (zones.is_empty(), unreadable) {
        (false, _) => Ok(zones),
        (true, true) => Err(format!("powercap counters under {} are not readable (they need root on most kernels)", root.display())),
        (true, false) => Err(format!("no RAPL package zone under {}", root.display())),
    }
}

/// Measures the energy of the work between [`Meter::start`] and [`Meter::stop`].
pub struct Meter {
    model: PowerModel,
    zones: Result<Vec<(Zone, u64)>, String>,
    cpu0: f64,
    wall0: Instant,
}

impl Meter {
    pub fn start(model: &PowerModel) -> Meter {
        let zones = package_zones(&model.powercap).map(|zs| zs.into_iter().filter_map(|z| read_u64(&z.energy).map(|v| (z, v))).collect());
        Meter { model: model.clone(), zones, cpu0: cpu_seconds(), wall0: Instant::now() }
    }

    pub fn stop(&self) -> Energy {
        let cpu = (cpu_seconds() - self.cpu0).max(0.0);
        let wall = self.wall0.elapsed().as_secs_f64();
        let co2 = |j: f64| carbon_g(j, self.model.grid_g_per_kwh);
        let measured = self.zones.as_ref().ok().and_then(|zs| {
            let mut uj = 0u64;
            for (z, v0) in zs {
                let v1 = read_u64(&z.energy)?;
                // A counter that wrapped went past its range once (the work is far shorter
                // than a wrap, which takes minutes at full power).
                uj += if v1 >= *v0 { v1 - v0 } else { z.range.saturating_sub(*v0) + v1 };
            }
            Some(uj as f64 * 1e-6)
        });
        match measured {
            Some(j) => Energy { joules: j, method: "measured (RAPL package)".into(), note: "whole-socket energy, other processes included".into(), cpu_seconds: cpu, wall_seconds: wall, co2e_g: co2(j) },
            None => {
                let j = cpu * self.model.watts_per_core;
                let why = match &self.zones {
                    Err(e) => e.clone(),
                    Ok(_) => "powercap counter vanished during the run".into(),
                };
                let note = format!("CPU time x {} W per busy core {ESTIMATE_ASSUMPTIONS}; {why}", self.model.watts_per_core);
                Energy { joules: j, method: "estimated".into(), note, cpu_seconds: cpu, wall_seconds: wall, co2e_g: co2(j) }
            }
        }
    }
}

/// Grams of CO2-equivalent for `joules` at `g_per_kwh`.
pub fn carbon_g(joules: f64, g_per_kwh: f64) -> f64 {
    joules / 3.6e6 * g_per_kwh
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn carbon_of_one_kwh_is_the_grid_intensity() {
        assert!((carbon_g(3.6e6, 480.0) - 480.0).abs() < 1e-9);
    }

    #[test]
    fn missing_powercap_falls_back_to_a_labelled_estimate() {
        let model = PowerModel { powercap: PathBuf::from("/nonexistent/powercap"), ..Default::default() };
        let m = Meter::start(&model);
        let mut x = 0u64;
        for i in 0..3_000_000u64 {
            x = x.wrapping_mul(6364136223846793005).wrapping_add(i);
        }
        std::hint::black_box(x);
        let e = m.stop();
        assert_eq!(e.method, "estimated");
        assert!(e.note.contains("no powercap interface"), "{}", e.note);
        assert!((e.joules - e.cpu_seconds * DEFAULT_WATTS_PER_CORE).abs() < 1e-12);
    }

    #[test]
    fn a_readable_package_zone_is_measured_and_wraps() {
        // A powercap tree as the kernel lays it out (a stand-in directory, for this unit test).
        let root = std::env::temp_dir().join(format!("smelt-powercap-{}", std::process::id()));
        let pkg = root.join("intel-rapl:0");
        let sub = root.join("intel-rapl:0:0");
        std::fs::create_dir_all(&pkg).unwrap();
        std::fs::create_dir_all(&sub).unwrap();
        std::fs::write(pkg.join("energy_uj"), "999000000\n").unwrap();
        std::fs::write(pkg.join("max_energy_range_uj"), "1000000000\n").unwrap();
        std::fs::write(sub.join("energy_uj"), "5\n").unwrap();
        let model = PowerModel { powercap: root.clone(), ..Default::default() };
        let m = Meter::start(&model);
        std::fs::write(pkg.join("energy_uj"), "2000000\n").unwrap(); // wrapped: 1 J + 2 J
        let e = m.stop();
        std::fs::remove_dir_all(&root).unwrap();
        assert_eq!(e.method, "measured (RAPL package)");
        assert!((e.joules - 3.0).abs() < 1e-9, "{}", e.joules);
    }
}
