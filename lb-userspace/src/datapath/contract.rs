//! The embedded eBPF object checked against `lb-common`'s declarations of
//! its maps and programs ([`lb_common::maps::ALL`],
//! [`lb_common::programs::ALL`]), the one place the agent takes names,
//! sizes, capacities, types and flags from. The kernel side (lb-ebpf's BTF
//! map definitions and program functions) is compiled separately, so a
//! definition changed on one side only would otherwise be found by the
//! kernel at best (a map of the wrong size, reused pins refused) and at
//! worst not at all (a key written with one layout, read with another).
//! [`check`] runs before every load and in a unit test.

use std::{collections::BTreeSet, str::FromStr as _, sync::OnceLock};

use aya_obj::{EbpfSectionKind, Map, Object, ProgramSection};
use lb_common::{
    maps::{MapDef, MapType},
    programs::{ProgramDef, ProgramType},
};
use thiserror::Error;

use super::object::OBJECT;

#[derive(Clone, Debug, Error)]
pub enum ContractError {
    #[error("reading the eBPF object: {0}")]
    Parse(String),
    #[error(
        "the eBPF object disagrees with lb-common's declarations (built from different sources?): {}",
        .0.join("; ")
    )]
    Mismatch(Vec<String>),
}

/// The embedded object against lb-common's declarations, checked once per
/// process (parsing the object takes a few milliseconds).
pub fn check_embedded() -> Result<(), ContractError> {
    static CHECKED: OnceLock<Result<(), ContractError>> = OnceLock::new();
    CHECKED
        .get_or_init(|| check(OBJECT, lb_common::maps::ALL, lb_common::programs::ALL))
        .clone()
}

/// Every map and program of `object` against `maps` and `programs`: the
/// same names on both sides, and for each map its type, key and value
/// sizes, capacity, flags and a BTF definition; for each program its
/// section (type and attach point). Lists every disagreement.
pub fn check(object: &[u8], maps: &[MapDef], programs: &[ProgramDef]) -> Result<(), ContractError> {
    let object = Object::parse(object).map_err(|e| ContractError::Parse(e.to_string()))?;
    let mut problems = Vec::new();

    // Data sections (.rodata, .data, .bss) become maps too; they are the
    // programs' own constants and globals, which the agent never touches.
    let object_maps: BTreeSet<&str> = object
        .maps
        .iter()
        .filter(|(_, map)| {
            !matches!(
                map.section_kind(),
                EbpfSectionKind::Rodata | EbpfSectionKind::Data | EbpfSectionKind::Bss
            )
        })
        .map(|(name, _)| name.as_str())
        .collect();
    for name in &object_maps {
        if !maps.iter().any(|m| m.name == *name) {
            problems.push(format!("map {name} is in the object but not declared"));
        }
    }
    for def in maps {
        match object.maps.get(def.name) {
            None => problems.push(format!(
                "map {} is declared but not in the object",
                def.name
            )),
            Some(map) => check_map(def, map, &mut problems),
        }
    }

    let object_programs: BTreeSet<&str> = object.programs.keys().map(String::as_str).collect();
    for name in object_programs {
        if !programs.iter().any(|p| p.name == name) {
            problems.push(format!("program {name} is in the object but not declared"));
        }
    }
    for def in programs {
        match object.programs.get(def.name) {
            None => problems.push(format!(
                "program {} is declared but not in the object",
                def.name
            )),
            Some(program) => check_program(def, &program.section, &mut problems),
        }
    }

    if problems.is_empty() {
        Ok(())
    } else {
        Err(ContractError::Mismatch(problems))
    }
}

fn check_map(def: &MapDef, map: &Map, problems: &mut Vec<String>) {
    let mut differs = |what: &str, object: u32, declared: u32| {
        if object != declared {
            problems.push(format!(
                "map {}: {what} {object} in the object, {declared} declared",
                def.name
            ));
        }
    };
    differs("type", map.map_type(), def.map_type as u32);
    differs("key size", map.key_size(), def.key_size);
    differs("value size", map.value_size(), def.value_size);
    differs("max entries", map.max_entries(), def.max_entries);
    differs("flags", map.map_flags(), def.flags);
    match (def.inner, map.inner()) {
        (None, None) => {}
        (Some((map_type, value_size, max_entries, flags)), Some(inner)) => {
            differs("inner type", inner.map_type(), map_type as u32);
            differs("inner key size", inner.key_size(), 4);
            differs("inner value size", inner.value_size(), value_size);
            differs("inner max entries", inner.max_entries(), max_entries);
            differs("inner flags", inner.map_flags(), flags);
        }
        (Some(_), None) => differs("inner maps", 0, 1),
        (None, Some(_)) => differs("inner maps", 1, 0),
    }
    // Pinned maps are told apart from those of earlier versions by their
    // BTF types (see the loader), so every map must be a BTF map.
    if !matches!(map, Map::Btf(_)) {
        problems.push(format!("map {}: not a BTF map (.maps section)", def.name));
    }
}

fn check_program(def: &ProgramDef, section: &ProgramSection, problems: &mut Vec<String>) {
    let declared = match ProgramSection::from_str(def.section) {
        Ok(declared) => declared,
        Err(e) => {
            problems.push(format!("program {}: declared section: {e}", def.name));
            return;
        }
    };
    let type_matches = matches!(
        (def.program_type, &declared),
        (
            ProgramType::CgroupSockAddr,
            ProgramSection::CgroupSockAddr { .. }
        ) | (ProgramType::CgroupSock, ProgramSection::CgroupSock { .. })
            | (
                ProgramType::SchedClassifier,
                ProgramSection::SchedClassifier
            )
            | (ProgramType::Xdp, ProgramSection::Xdp { .. })
    );
    if !type_matches {
        problems.push(format!(
            "program {}: declared as {:?} in section {}",
            def.name, def.program_type, def.section
        ));
    }
    // ProgramSection has no PartialEq; its Debug form spells out the type
    // and the attach point.
    let (object, declared) = (format!("{section:?}"), format!("{declared:?}"));
    if object != declared {
        problems.push(format!(
            "program {}: {object} in the object, {declared} declared",
            def.name
        ));
    }
}

/// aya's name for a declared map type (pinned maps report theirs as aya's).
pub(crate) fn aya_map_type(map_type: MapType) -> aya::maps::MapType {
    use aya::maps::MapType as Aya;
    match map_type {
        MapType::Hash => Aya::Hash,
        MapType::Array => Aya::Array,
        MapType::PerCpuArray => Aya::PerCpuArray,
        MapType::LruHash => Aya::LruHash,
        MapType::LpmTrie => Aya::LpmTrie,
        MapType::ArrayOfMaps => Aya::ArrayOfMaps,
        MapType::SkStorage => Aya::SkStorage,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn embedded() -> &'static [u8] {
        assert!(
            !OBJECT.is_empty(),
            "built with AYA_BUILD_SKIP: the contract test needs the eBPF object"
        );
        OBJECT
    }

    #[test]
    fn embedded_object_matches_lb_common() {
        if let Err(e) = check(embedded(), lb_common::maps::ALL, lb_common::programs::ALL) {
            panic!("{e}");
        }
        assert!(check_embedded().is_ok());
    }

    /// No program calls compiler-builtins' `memset` (or its kin): BPF has
    /// no such builtin, LLVM 22 leaves a call to a byte loop in the object
    /// (64 iterations to zero a route lookup's parameters, several such
    /// per packet before 0554994), and code that zeroes a struct or a
    /// padding array on the stack gets one without a warning.
    #[test]
    fn no_program_calls_a_memory_builtin() {
        use object::{Object as _, ObjectSection as _, ObjectSymbol as _, RelocationTarget};
        const BUILTINS: [&str; 5] = ["memset", "memcpy", "memmove", "memcmp", "bcmp"];
        let file = object::File::parse(embedded()).expect("parsing the eBPF object");
        let builtins: std::collections::HashSet<object::SymbolIndex> = file
            .symbols()
            .filter(|s| BUILTINS.contains(&s.name().unwrap_or("")))
            .map(|s| s.index())
            .collect();
        let mut callers = BTreeSet::new();
        for section in file.sections() {
            for (offset, reloc) in section.relocations() {
                let RelocationTarget::Symbol(target) = reloc.target() else {
                    continue;
                };
                if !builtins.contains(&target) {
                    continue;
                }
                let caller = file
                    .symbols()
                    .find(|s| {
                        s.section_index() == Some(section.index())
                            && s.kind() == object::SymbolKind::Text
                            && s.address() <= offset
                            && offset < s.address() + s.size()
                    })
                    .and_then(|s| s.name().ok())
                    .unwrap_or("?");
                // The builtins may call each other; nothing else may.
                if !BUILTINS.contains(&caller) {
                    callers.insert(format!(
                        "{caller} (section {}, offset {offset:#x})",
                        section.name().unwrap_or("?")
                    ));
                }
            }
        }
        assert!(
            callers.is_empty(),
            "calls of memory builtins in the eBPF object: {callers:#?}"
        );
    }

    fn mismatches(maps: &[MapDef], programs: &[ProgramDef]) -> Vec<String> {
        match check(embedded(), maps, programs) {
            Err(ContractError::Mismatch(problems)) => problems,
            other => panic!("expected a mismatch, got {other:?}"),
        }
    }

    #[test]
    fn a_map_declared_otherwise_is_named() {
        let mut maps = lb_common::maps::ALL.to_vec();
        let frontends = maps
            .iter_mut()
            .find(|m| m.name == lb_common::maps::FRONTENDS4)
            .unwrap();
        frontends.value_size += 4;
        frontends.flags = lb_common::map_flags::LRU;
        let affinity = maps
            .iter_mut()
            .find(|m| m.name == lb_common::maps::AFFINITY)
            .unwrap();
        affinity.map_type = MapType::Hash;
        affinity.max_entries /= 2;
        let problems = mismatches(&maps, lb_common::programs::ALL);
        assert_eq!(
            problems,
            [
                "map FRONTENDS4: value size 16 in the object, 20 declared",
                "map FRONTENDS4: flags 1 in the object, 2 declared",
                "map AFFINITY: type 9 in the object, 1 declared",
                "map AFFINITY: max entries 131072 in the object, 65536 declared",
            ]
        );
    }

    #[test]
    fn maps_on_one_side_only_are_named() {
        let mut maps: Vec<MapDef> = lb_common::maps::ALL
            .iter()
            .filter(|m| m.name != lb_common::maps::SLOTS)
            .copied()
            .collect();
        maps.push(MapDef {
            name: "GONE",
            ..maps[0]
        });
        let problems = mismatches(&maps, lb_common::programs::ALL);
        assert_eq!(
            problems,
            [
                "map SLOTS is in the object but not declared",
                "map GONE is declared but not in the object",
            ]
        );
    }

    #[test]
    fn programs_declared_otherwise_are_named() {
        let mut programs: Vec<ProgramDef> = lb_common::programs::ALL
            .iter()
            .filter(|p| p.name != lb_common::programs::REPLY)
            .copied()
            .collect();
        let connect4 = programs
            .iter_mut()
            .find(|p| p.name == lb_common::programs::CONNECT4)
            .unwrap();
        connect4.section = "cgroup/connect6";
        let post_bind4 = programs
            .iter_mut()
            .find(|p| p.name == lb_common::programs::POST_BIND4)
            .unwrap();
        post_bind4.program_type = ProgramType::CgroupSockAddr;
        let problems = mismatches(lb_common::maps::ALL, &programs);
        assert_eq!(problems.len(), 3, "{problems:?}");
        assert_eq!(
            problems[0],
            "program ferry_reply is in the object but not declared"
        );
        assert!(
            problems[1].starts_with("program ferry_connect4: CgroupSockAddr { attach_type: Connect4 } in the object, CgroupSockAddr { attach_type: Connect6 } declared"),
            "{problems:?}"
        );
        assert_eq!(
            problems[2],
            "program ferry_post_bind4: declared as CgroupSockAddr in section cgroup/post_bind4"
        );
    }
}
