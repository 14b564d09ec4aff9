"""The seed story's events (World Metaverse Conference in Anting) as CloudEvents, and
every organization they name with the catalog id it must resolve to."""

from __future__ import annotations

from typing import Any

SEED_NAMES: dict[str, str] = {
    "China Simulation Federation": "china-simulation-federation",
    "中国仿真学会": "china-simulation-federation",
    "Chinese Institute of Command and Control": "chinese-institute-of-command-and-control",
    "中国指挥与控制学会": "chinese-institute-of-command-and-control",
    "Beijing Institute of Technology": "beijing-institute-of-technology",
    "北京理工大学": "beijing-institute-of-technology",
    "BIT": "beijing-institute-of-technology",
    "Anting Town Government of Jiading District": "anting-town-government",
    "Anting Town Government": "anting-town-government",
    "安亭镇人民政府": "anting-town-government",
    "Anting Town": "anting-town-government",
    "the metaverse committee of the China Simulation Federation": "csf-metaverse-committee",
    "Jiading District Government": "jiading-district-government",
    "上海市嘉定区人民政府": "jiading-district-government",
    "Jiading District": "jiading-district-government",
    "Shanghai Metaverse Industry Innovation Alliance": "shanghai-metaverse-industry-innovation-alliance",
    "上海市元宇宙产业创新联盟": "shanghai-metaverse-industry-innovation-alliance",
    "Shanghai International Circuit": "shanghai-international-circuit",
    "上海国际赛车场": "shanghai-international-circuit",
    "Meta Baylism": "meta-baylism",
    "auto metaverse industry base of Anting": "meta-baylism",
}


def seed_events() -> list[dict[str, Any]]:
    """The conference's announcements and one signing, as publishers would send them."""
    base = {"specversion": "1.0", "source": "/seed/shine", "time": "2023-08-23T09:00:00+08:00"}
    hosts = [
        {"name": "China Simulation Federation", "role": "host"},
        {"name": "Chinese Institute of Command and Control", "role": "host"},
        {"name": "Beijing Institute of Technology", "role": "host"},
        {"name": "Anting Town Government of Jiading District", "role": "co-host"},
        {"name": "the metaverse committee of the China Simulation Federation", "role": "co-host"},
    ]
    return [
        {**base, "id": "seed-opened", "type": "conference.announcement", "subject": "wmc-2023",
         "data": {"headline": "World Metaverse Conference begins in Jiading District",
                  "kind": "conference_opened", "conference": "World Metaverse Conference",
                  "location": {"town": "Anting", "district": "Jiading", "city": "Shanghai", "country": "CN"},
                  "organizations": [*hosts, {"name": "Jiading District Government", "role": "speaker"}],
                  "people": [{"name": "Gao Xiang", "role": "director", "affiliation": "Jiading District"}],
                  "figures": {"experts": 110, "sub_forums": 9}, "language": "en"}},
        {**base, "id": "seed-opened-zh", "type": "conference.announcement", "subject": "wmc-2023",
         "data": {"headline": "世界元宇宙大会在嘉定开幕", "kind": "conference_opened",
                  "organizations": [{"name": n, "role": "host"} for n in
                                    ["中国仿真学会", "中国指挥与控制学会", "北京理工大学", "安亭镇人民政府", "上海市嘉定区人民政府"]],
                  "language": "zh"}},
        {**base, "id": "seed-alliance", "type": "conference.announcement", "subject": "wmc-2023",
         "data": {"headline": "Shanghai Metaverse Industry Innovation Alliance established",
                  "kind": "alliance_established",
                  "organizations": [{"name": "Shanghai Metaverse Industry Innovation Alliance", "role": "founded"},
                                    {"name": "上海市元宇宙产业创新联盟", "role": "founded"}]}},
        {**base, "id": "seed-whitepaper", "type": "conference.announcement", "subject": "wmc-2023",
         "data": {"headline": "Whitepaper on Anting's auto metaverse industry released",
                  "kind": "whitepaper_released", "figures": {"target_scale_cny": 100_000_000_000},
                  "organizations": [{"name": "Anting Town Government", "role": "publisher"}]}},
        {**base, "id": "seed-base", "type": "conference.announcement", "subject": "wmc-2023",
         "data": {"headline": "Meta Baylism unveiled", "kind": "industry_base_unveiled",
                  "organizations": [{"name": "Meta Baylism", "role": "base"},
                                    {"name": "auto metaverse industry base of Anting", "role": "base"},
                                    {"name": "安亭镇人民政府", "role": "owner"},
                                    {"name": "Shanghai International Circuit", "role": "neighbour"},
                                    {"name": "上海国际赛车场", "role": "neighbour"},
                                    {"name": "BIT", "role": "partner"},
                                    {"name": "Anting Town", "role": "host"},
                                    {"name": "Jiading District", "role": "district"}]}},
        {**base, "id": "seed-signing", "type": "agreement.signed", "subject": "wmc-2023-signing",
         "data": {"title": "Cooperation agreements between metaverse companies and Anting Town",
                  "party_count": 21, "sectors": ["metaverse", "automotive"],
                  "organizations": [{"name": "Anting Town Government", "role": "party"},
                                    {"name": "Some Unknown Metaverse Startup Co., Ltd.", "role": "party"}]}},
    ]
