//! Grouping moves into waves.
//!
//! Moves arrive in priority order (VFWs first). Each move goes into the
//! earliest wave where adding it keeps the wave within the per-source,
//! per-destination and global limits (first fit). User VMs never go into a
//! wave earlier than the last VFW's, so "VFWs first" holds for waves too, not
//! only for the order of the list. The result is sorted by wave, stable, so
//! within a wave the priority order is kept.

use crate::model::{Limits, Move, VmKind};

#[derive(Default)]
struct Wave<'a> {
    total: usize,
    src: Vec<(&'a str, usize)>,
    dst: Vec<(&'a str, usize)>,
}

fn get(v: &[(&str, usize)], k: &str) -> usize {
    v.iter().find(|(n, _)| *n == k).map_or(0, |(_, c)| *c)
}

fn bump<'a>(v: &mut Vec<(&'a str, usize)>, k: &'a str) {
    match v.iter_mut().find(|(n, _)| *n == k) {
        Some((_, c)) => *c += 1,
        None => v.push((k, 1)),
    }
}

/// Assign `wave` to every move (limits must be ≥ 1) and sort by wave.
pub(crate) fn assign_waves(moves: &mut [Move], limits: &Limits) {
    let mut wave_of = Vec::with_capacity(moves.len());
    {
        let mut waves: Vec<Wave> = Vec::new();
        let mut floor = 0usize;
        let mut last_vfw = 0usize;
        for m in moves.iter() {
            if m.kind == VmKind::User {
                floor = floor.max(last_vfw);
            }
            let mut w = floor;
            loop {
                if w == waves.len() {
                    waves.push(Wave::default());
                }
                let wv = &waves[w];
                if wv.total < limits.global
                    && get(&wv.src, &m.from) < limits.per_source
                    && get(&wv.dst, &m.to) < limits.per_destination
                {
                    break;
                }
                w += 1;
            }
            let wv = &mut waves[w];
            wv.total += 1;
            bump(&mut wv.src, &m.from);
            bump(&mut wv.dst, &m.to);
            if m.kind == VmKind::Vfw {
                last_vfw = last_vfw.max(w);
            }
            wave_of.push(w as u32);
        }
    }
    for (m, w) in moves.iter_mut().zip(wave_of) {
        m.wave = w;
    }
    moves.sort_by_key(|m| m.wave);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mv(vm: &str, from: &str, to: &str, kind: VmKind) -> Move {
        Move {
            vm: vm.into(),
            from: from.into(),
            to: to.into(),
            wave: 0,
            kind,
            not_migratable: None,
        }
    }

    #[test]
    fn respects_limits_and_vfw_first() {
        let mut moves = vec![
            mv("f1", "a", "b", VmKind::Vfw),
            mv("f2", "a", "b", VmKind::Vfw),
            mv("f3", "a", "b", VmKind::Vfw),
            mv("u1", "a", "c", VmKind::User),
            mv("u2", "x", "c", VmKind::User),
        ];
        assign_waves(&mut moves, &Limits::default());
        let w: Vec<(&str, u32)> = moves.iter().map(|m| (m.vm.as_str(), m.wave)).collect();
        // f3 cannot join wave 0 (source a and destination b both at 2);
        // u2 could run in wave 0 but users wait for the last VFW wave.
        assert_eq!(
            w,
            vec![("f1", 0), ("f2", 0), ("f3", 1), ("u1", 1), ("u2", 1)]
        );
    }

    #[test]
    fn global_limit() {
        let mut moves: Vec<Move> = (0..7)
            .map(|i| {
                mv(
                    &format!("u{i}"),
                    &format!("s{i}"),
                    &format!("d{i}"),
                    VmKind::User,
                )
            })
            .collect();
        assign_waves(
            &mut moves,
            &Limits {
                per_source: 2,
                per_destination: 2,
                global: 5,
            },
        );
        assert_eq!(moves.iter().filter(|m| m.wave == 0).count(), 5);
        assert_eq!(moves.iter().filter(|m| m.wave == 1).count(), 2);
    }
}
