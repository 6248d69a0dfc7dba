"""Generate the committed sample datasets (deterministic; re-run only to change them).

customers.csv        3,000-ish customer records with planted problems: blank cells, stray and
                     doubled whitespace, mixed-case e-mails, phones and dates in several formats,
                     money with "$" and thousands separators, exact duplicate rows, and the same
                     person entered 2–3 times with typos, nicknames and different formats.
customers_truth.csv  row (0-based position in customers.csv) → entity id, for precision/recall.
orders.csv           2,000 orders with mixed date formats, blanks, a constant column and an id column.

    python tests/data/generate_samples.py
"""

import csv
import random
from datetime import date, timedelta
from pathlib import Path

HERE = Path(__file__).parent
rng = random.Random(20261125)

FIRST = [
    "James",
    "Mary",
    "Robert",
    "Patricia",
    "John",
    "Jennifer",
    "Michael",
    "Linda",
    "David",
    "Elizabeth",
    "William",
    "Barbara",
    "Richard",
    "Susan",
    "Joseph",
    "Jessica",
    "Thomas",
    "Sarah",
    "Charles",
    "Karen",
    "Christopher",
    "Lisa",
    "Daniel",
    "Nancy",
    "Matthew",
    "Betty",
    "Anthony",
    "Margaret",
    "Mark",
    "Sandra",
    "Donald",
    "Ashley",
    "Steven",
    "Kimberly",
    "Paul",
    "Emily",
    "Andrew",
    "Donna",
    "Joshua",
    "Michelle",
    "Kenneth",
    "Carol",
    "Kevin",
    "Amanda",
    "Brian",
    "Dorothy",
    "George",
    "Melissa",
    "Timothy",
    "Deborah",
    "Ada",
    "Grace",
    "Alan",
    "Edsger",
    "Barbara",
    "Ken",
    "Dennis",
    "Margaret",
    "Katherine",
    "Tim",
]
LAST = [
    "Smith",
    "Johnson",
    "Williams",
    "Brown",
    "Jones",
    "Garcia",
    "Miller",
    "Davis",
    "Rodriguez",
    "Martinez",
    "Hernandez",
    "Lopez",
    "Gonzalez",
    "Wilson",
    "Anderson",
    "Thomas",
    "Taylor",
    "Moore",
    "Jackson",
    "Martin",
    "Lee",
    "Perez",
    "Thompson",
    "White",
    "Harris",
    "Sanchez",
    "Clark",
    "Ramirez",
    "Lewis",
    "Robinson",
    "Walker",
    "Young",
    "Allen",
    "King",
    "Wright",
    "Scott",
    "Torres",
    "Nguyen",
    "Hill",
    "Flores",
    "Green",
    "Adams",
    "Nelson",
    "Baker",
    "Hall",
    "Rivera",
    "Campbell",
    "Mitchell",
    "Carter",
    "Roberts",
    "Lovelace",
    "Hopper",
    "Turing",
    "Dijkstra",
    "Liskov",
    "Thompson",
    "Ritchie",
    "Hamilton",
    "Johnson",
    "Berners-Lee",
]
NICK = {
    "William": "Bill",
    "Robert": "Bob",
    "Richard": "Rick",
    "Michael": "Mike",
    "Elizabeth": "Liz",
    "Katherine": "Kate",
    "Christopher": "Chris",
    "Joseph": "Joe",
    "Thomas": "Tom",
    "Daniel": "Dan",
    "Matthew": "Matt",
    "Anthony": "Tony",
    "Kenneth": "Ken",
    "Jennifer": "Jen",
    "Patricia": "Pat",
}
CITIES = [
    "Springfield",
    "Riverside",
    "Franklin",
    "Greenville",
    "Bristol",
    "Clinton",
    "Fairview",
    "Salem",
    "Madison",
    "Georgetown",
    "Arlington",
    "Ashland",
    "Dover",
    "Oxford",
    "Jackson",
    "Burlington",
]
DOMAINS = ["example.com", "mail.example.org", "inbox.example.net", "corp.example.io"]
STATUSES = ["paid", "shipped", "delivered", "cancelled", "refunded", "pending"]


def typo(word: str) -> str:
    if len(word) < 4:
        return word
    i = rng.randrange(1, len(word) - 1)
    kind = rng.choice(["swap", "drop", "double"])
    if kind == "swap":
        return word[:i] + word[i + 1] + word[i] + word[i + 2 :]
    if kind == "drop":
        return word[:i] + word[i + 1 :]
    return word[:i] + word[i] + word[i:]


def phone_formats(digits: str) -> str:
    a, b, c = digits[:3], digits[3:6], digits[6:]
    return rng.choice(
        [f"({a}) {b}-{c}", f"{a}-{b}-{c}", f"{a}.{b}.{c}", f"+1 {a} {b} {c}", f"1{a}{b}{c}", f"{a}{b}{c}"]
    )


def date_formats(d: date) -> str:
    return rng.choice(
        [d.isoformat(), d.strftime("%m/%d/%Y"), d.strftime("%Y/%m/%d"), d.strftime("%b %d, %Y"), d.isoformat()]
    )


def money_formats(value: float) -> str:
    return rng.choice([f"{value:.2f}", f"${value:,.2f}", f"{value:.2f}", f" {value:.2f} ", f"{value:.1f}"])


def make_person(entity: int) -> dict:
    first, last = rng.choice(FIRST), rng.choice(LAST)
    local = rng.choice([f"{first}.{last}", f"{first[0]}{last}", f"{first}{last[0]}", f"{first}_{last}{entity % 97}"])
    return {
        "first_name": first,
        "last_name": last,
        "email": f"{local.lower()}{entity}@{rng.choice(DOMAINS)}",
        "phone": f"{rng.randint(201, 989)}{rng.randint(200, 999)}{rng.randint(1000, 9999)}",
        "city": rng.choice(CITIES),
        "signup_date": date(2019, 1, 1) + timedelta(days=rng.randrange(0, 2000)),
        "lifetime_value": round(rng.uniform(0, 5000), 2),
        "is_active": rng.choice(["true", "false", "yes", "no", "TRUE", "False"]),
    }


def render(person: dict, customer_id: str, variant: bool) -> dict:
    """One record of a person; `variant` records carry the mess of a second data entry."""
    first, last, email = person["first_name"], person["last_name"], person["email"]
    if variant:
        roll = rng.random()
        if roll < 0.35:
            first = typo(first)
        elif roll < 0.55:
            last = typo(last)
        elif roll < 0.70 and first in NICK:
            first = NICK[first]
        first = rng.choice([first, first.upper(), first.lower(), f"  {first}"])
        email = rng.choice([email.upper(), f" {email} ", email.capitalize(), email])
    row = {
        "customer_id": customer_id,
        "first_name": first,
        "last_name": rng.choice([last, f"{last}  ", last]) if variant else last,
        "email": email,
        "phone": phone_formats(person["phone"]),
        "city": person["city"] if not variant or rng.random() < 0.8 else person["city"].lower(),
        "signup_date": date_formats(person["signup_date"]),
        "lifetime_value": money_formats(person["lifetime_value"]),
        "is_active": person["is_active"],
    }
    # Blank cells, never all identifying fields at once.
    for column in ("phone", "city", "signup_date", "lifetime_value"):
        if rng.random() < 0.06:
            row[column] = ""
    if variant and rng.random() < 0.15:
        row[rng.choice(["email", "phone"])] = ""
    return row


def customers() -> None:
    rows, truth = [], []
    entity = 0
    next_id = 1
    while len(rows) < 2950:
        entity += 1
        person = make_person(entity)
        copies = rng.choices([1, 2, 3], weights=[70, 22, 8])[0]
        for copy in range(copies):
            rows.append(render(person, f"C{next_id:05d}", variant=copy > 0))
            truth.append(entity)
            next_id += 1
    # Exact duplicate rows (the same export twice).
    for _ in range(60):
        i = rng.randrange(len(rows))
        rows.append(dict(rows[i]))
        truth.append(truth[i])
    order = list(range(len(rows)))
    rng.shuffle(order)
    with open(HERE / "customers.csv", "w", newline="") as out:
        writer = csv.DictWriter(out, fieldnames=list(rows[0]), lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows[i] for i in order)
    with open(HERE / "customers_truth.csv", "w", newline="") as out:
        writer = csv.writer(out, lineterminator="\n")
        writer.writerow(["row", "entity_id"])
        writer.writerows((position, truth[i]) for position, i in enumerate(order))


def orders() -> None:
    with open(HERE / "orders.csv", "w", newline="") as out:
        writer = csv.writer(out, lineterminator="\n")
        writer.writerow(
            ["order_id", "customer_email", "order_date", "quantity", "unit_price", "status", "channel", "note"]
        )
        for n in range(1, 2001):
            d = date(2024, 1, 1) + timedelta(days=rng.randrange(0, 600))
            writer.writerow(
                [
                    f"O{n:06d}",
                    "" if rng.random() < 0.05 else f"buyer{rng.randrange(1, 700)}@example.com",
                    d.isoformat() if rng.random() < 0.7 else d.strftime("%m/%d/%Y"),
                    "" if rng.random() < 0.03 else rng.randint(1, 12),
                    f"{rng.uniform(1, 300):.2f}",
                    rng.choice(STATUSES),
                    "web",
                    "" if rng.random() < 0.8 else rng.choice(["gift", "rush", "fragile", "call first"]),
                ]
            )


if __name__ == "__main__":
    customers()
    orders()
